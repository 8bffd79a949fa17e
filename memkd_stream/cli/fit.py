"""``memkd-stream fit``: train a line on good images, calibrate, save, publish, activate.

The order is chosen so that failures are cheap: the line id, the dataset and Redis are checked
before any training (a down Redis fails in seconds, not after an hour of GPU time); the artifact
file is written before publishing, so a failed publish never loses a trained model (``lines
publish LINE FILE`` uploads it later).
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from memkd_stream.cli.gate import GateOutcome, gate_new_version, plan_images, print_gate
from memkd_stream.cli.inputs import (
    BACKBONES,
    DEFAULT_SCORE_TOPK,
    DEFAULT_TARGET_FPR,
    DEFAULT_THRESHOLD_RULE,
    PRECISIONS,
    THRESHOLD_RULES,
    DatasetError,
    DatasetInput,
    check_readable,
    line_tiling,
    load_teacher_for,
    parse_positive,
    parse_rate,
    parse_roi,
    parse_score_topk,
    parse_tile,
    resolve_dataset,
    torch_device,
    torch_precision,
)
from memkd_stream.cli.main import Context, UsageError, line_arg, whole_number
from memkd_stream.cli.output import Output
from memkd_stream.cli.stored_models import Teachers, fingerprints
from memkd_stream.errors import MemkdStreamError
from memkd_stream.settings import ModelSettings

if TYPE_CHECKING:
    from memkd_stream.lines.store import LineStore

__all__ = ["register"]


MIN_TRAIN_IMAGES = 8
DEFAULT_INPUT_SIZE = 256
_POSITIVE = whole_number(1)
SHOWN_UNREADABLE = 20


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "fit",
        help="train a line model on good images, publish it to Redis and activate it",
        description=__doc__,
    )
    p.add_argument("--line", type=line_arg, required=True, help="line id, e.g. A or press-3")
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="DIR",
        help="a folder of good images, or an MVTec-layout category (train/good; test/ is "
        "then used for the report's metrics)",
    )
    default_teacher = ModelSettings.model_fields["backbone"].default
    p.add_argument(
        "--backbone",
        choices=BACKBONES,
        help=f"teacher (default: the setting model.backbone, itself {default_teacher} unless set)",
    )
    p.add_argument(
        "--teacher-weights",
        "--wrn50-weights",
        type=Path,
        metavar="FILE",
        help="teacher weight file (WRN50: torchvision V1; default: settings / the lite package)",
    )
    p.add_argument("--roi", type=parse_roi, metavar="X,Y,W,H", help="crop box in image pixels")
    p.add_argument(
        "--tile",
        type=parse_tile,
        metavar="SIZE[,OVERLAP]",
        help="cut each frame (inside the ROI) into SIZE-pixel square tiles sharing OVERLAP "
        "pixels (default 0), for small defects on large frames; --input-size then defaults to "
        "SIZE",
    )
    schedule = p.add_mutually_exclusive_group()
    schedule.add_argument(
        "--steps",
        type=_POSITIVE,
        metavar="N",
        help="optimiser steps (default 1000 with a cosine lr; --memory-only: 60)",
    )
    schedule.add_argument("--epochs", type=_POSITIVE, metavar="N", help="passes over the images")
    p.add_argument(
        "--max-minutes",
        type=parse_positive,
        metavar="M",
        help="stop training after M minutes and keep the best student so far (a CPU-only box: "
        "the default schedule is 10-40 min at 256 px on 2 cores)",
    )
    p.add_argument("--batch-size", type=_POSITIVE, default=16, metavar="N", help="default 16")
    p.add_argument(
        "--input-size",
        type=_POSITIVE,
        metavar="PX",
        help=f"default {DEFAULT_INPUT_SIZE} (tiled: the tile size)",
    )
    p.add_argument(
        "--score-topk",
        type=parse_score_topk,
        default=DEFAULT_SCORE_TOPK,
        metavar="F",
        help="image score: the mean of this fraction of the anomaly map's highest pixels "
        f"(default {DEFAULT_SCORE_TOPK:g} = the top {100 * DEFAULT_SCORE_TOPK:g} %%; 0 = the "
        "map's maximum, for defects smaller than ~0.2 %% of the image)",
    )
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: settings model.device)")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="compute precision of training and calibration (default: settings "
        "model.precision; auto = bf16 where the device does it natively, else fp32)",
    )
    p.add_argument(
        "--target-fpr",
        type=parse_rate,
        metavar="F",
        help="false-alarm rate the threshold is set for, on good images like the training ones "
        f"(default {DEFAULT_TARGET_FPR:g} = {100 * DEFAULT_TARGET_FPR:g} %%)",
    )
    p.add_argument(
        "--threshold-rule",
        choices=THRESHOLD_RULES,
        help="how held-out good scores set the threshold (default "
        f"{DEFAULT_THRESHOLD_RULE}: the fitted log-normal's quantile for --target-fpr; "
        "lognormal: a more cautious prediction bound)",
    )
    p.add_argument(
        "--defects",
        type=Path,
        metavar="DIR",
        help="a folder of defective example images: the report adds how many the threshold "
        "catches and the threshold with the best F1 (an MVTec category's test split counts too)",
    )
    p.add_argument(
        "--threshold-from",
        choices=("good", "defects"),
        default="good",
        help="good (default): the --target-fpr rule on held-out good images; defects: the best-F1 "
        "threshold against the defective examples (needs some)",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="artifact path (default ./<line>-<UTC time>.safetensors)",
    )
    p.add_argument(
        "--dtype",
        choices=("fp32", "fp16", "bf16"),
        default="fp32",
        help="storage dtype of the weights in the artifact (not --precision)",
    )
    p.add_argument(
        "--no-activate", action="store_true", help="publish but keep the current version"
    )
    lifecycle = p.add_argument_group(
        "retraining a line (DESIGN.md section 5; exit 5 = published but not activated)"
    )
    lifecycle.add_argument(
        "--memory-only",
        action="store_true",
        help="start from the line's active version and re-learn only its memories on --data "
        "(minutes, not hours); publishes a delta of a few hundred KiB",
    )
    lifecycle.add_argument(
        "--memory-init",
        choices=("parent", "data"),
        default="parent",
        help="--memory-only: start the memories from the active version's (default) or "
        "from the new images' teacher features",
    )
    lifecycle.add_argument(
        "--gate-data",
        type=Path,
        metavar="DIR",
        help="images neither version trained on, to compare the new version with the active "
        "one before activating it (a folder of good images or a category with a test split; "
        "default: --data's test split, else a slice of --data held back from training)",
    )
    lifecycle.add_argument(
        "--force",
        action="store_true",
        help="activate even if the new version scores worse than the active one",
    )
    p.add_argument("--no-publish", action="store_true", help="only write the artifact file")
    p.add_argument(
        "--min-images",
        type=_POSITIVE,
        default=MIN_TRAIN_IMAGES,
        metavar="N",
        help=f"fewest readable good images to train on (default {MIN_TRAIN_IMAGES})",
    )
    p.set_defaults(handler=_fit)


def _fit(ctx: Context) -> int:
    args, out, settings = ctx.args, ctx.out, ctx.settings
    if args.memory_only:
        from memkd_stream.cli.refit import refit_line

        return refit_line(ctx)
    store = None
    if not args.no_publish:
        store = ctx.store()
        store.lines()  # Redis down -> StoreUnavailable now, before any training
    dataset = _readable_dataset(args.data, args.roi, args.min_images, out)
    incumbent = store.current(args.line) if store is not None and not args.no_activate else None
    gate_images, dataset.train = plan_images(ctx, dataset, incumbent)
    defect_paths = _defect_examples(args.defects, args.roi, out)
    if args.threshold_from == "defects" and not defect_paths and not dataset.has_labels:
        raise UsageError(
            "--threshold-from defects needs defective examples: pass --defects DIR, or --data "
            "an MVTec category with a test split"
        )

    from memkd.config import ModelConfig
    from memkd.train import fit

    backbone = args.backbone or settings.model.backbone
    device = torch_device(settings, args.device)
    precision = torch_precision(settings, args.precision, device)
    out.note(f"loading teacher {backbone} on {device} ({precision} compute)")
    teacher = load_teacher_for(backbone, args.teacher_weights, settings, device)
    tiling, input_size = line_tiling(args.tile, args.input_size)
    model_config = ModelConfig(backbone=backbone, input_size=input_size, score_topk=args.score_topk)
    train_config = train_config_from(args, device, precision, args.steps)
    out.note(
        f"training line {args.line} on {len(dataset.train)} good images from {dataset.root} "
        f"({train_config.total_steps(len(dataset.train))} steps at most, seed {args.seed})"
    )
    started = time.perf_counter()
    with _Progress(out) as progress:
        result = fit(
            dataset.train, model_config, train_config, teacher, progress, roi=args.roi,
            tiling=tiling,
        )  # fmt: skip
    model = result.model
    model.provenance["trained_on"] = trained_on(dataset.train, train_config)
    _calibrate_on_defects(ctx, model, teacher, dataset, defect_paths, precision)
    evaluation = evaluate_on_test(ctx, model, teacher, dataset, precision)
    elapsed = time.perf_counter() - started

    path = args.out or Path(f"{args.line}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    sha256 = model.save(path, dtype=args.dtype)

    version = publish_trained(ctx, store, path)
    gate = None
    if store is not None and version is not None and not args.no_activate:
        teachers = Teachers(settings, device, args.teacher_weights)
        teachers.add(teacher)
        gate = gate_new_version(
            ctx, store, version, incumbent, model, teachers, gate_images, precision
        )

    data = fit_report(
        ctx, model, result.report, dataset, evaluation, path=path, sha256=sha256,
        version=version, gate=gate, backbone=backbone, device=device, precision=precision,
        elapsed=elapsed,
    )  # fmt: skip
    out.result(data, lambda console: _print_report(console, data))
    return gate.exit_code if gate is not None else 0


def train_config_from(
    args: argparse.Namespace, device: Any, precision: Any, steps: int | None
) -> Any:
    """The TrainConfig `fit` and `fit --memory-only` build from their shared options (``steps``:
    what the command chose; the rest stay TrainConfig's defaults)."""
    from memkd.config import TrainConfig

    overrides = threshold_settings(args)
    if args.max_minutes is not None:
        overrides["max_seconds"] = 60.0 * args.max_minutes
    return TrainConfig(
        steps=steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        device=device,
        precision=precision,
        **overrides,
    )


def threshold_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The threshold options given (``--target-fpr``, ``--threshold-rule``) as TrainConfig
    fields; the rest stay TrainConfig's defaults, the same for a full fit and a refit."""
    chosen: dict[str, Any] = {}
    if args.target_fpr is not None:
        chosen["target_fpr"] = args.target_fpr
    if args.threshold_rule is not None:
        chosen["threshold_rule"] = args.threshold_rule
    return chosen


def evaluate_on_test(
    ctx: Context, model: Any, teacher: Any, dataset: DatasetInput, precision: Any
) -> dict[str, Any]:
    """Metrics on a category's test split (nothing for a plain folder), stored with the model
    so that `lines show` can compare versions on the same test set."""
    if not dataset.has_labels:
        return {}
    ctx.out.note(f"evaluating on {len(dataset.category.test)} test images of {dataset.root}")
    from memkd_stream.cli.scoring import evaluate_category

    scored, evaluation = evaluate_category(
        model, teacher, dataset.category, ctx.args.batch_size, precision=precision
    )
    for item in scored.skipped:
        ctx.out.warn(f"test image skipped: {item.path}: {item.reason}")
    model.provenance["metrics"] = evaluation["metrics"]
    model.provenance["evaluation"] = evaluation | {"data": str(dataset.root)}
    return evaluation


def fit_report(
    ctx: Context, model: Any, report: dict[str, Any], dataset: DatasetInput,
    evaluation: dict[str, Any], *, path: Path, sha256: str, version: int | None,
    gate: GateOutcome | None, backbone: str, device: str, precision: Any, elapsed: float,
) -> dict[str, Any]:  # fmt: skip
    """What `fit` prints (a table, or JSON with --json), for a full fit and a refit alike."""
    calibration = model.calibration.to_dict() if model.calibration is not None else {}
    return {
        "line": ctx.args.line,
        "version": version,
        "active": gate is not None and gate.activated,
        "artifact": str(path),
        "sha256": sha256,
        "backbone": backbone,
        "tiling": model.tiling.to_dict() if model.tiling is not None else None,
        "device": device,
        "precision": precision.value,
        "dataset": {
            "root": str(dataset.root),
            "kind": dataset.kind,
            "n_train_images": len(dataset.train),
            "unreadable": [{"path": str(u.path), "reason": u.reason} for u in dataset.unreadable],
        },
        "training": {
            "seconds": report.get("train_seconds"),
            "total_seconds": round(elapsed, 2),
            "steps": report.get("steps"),
            "steps_run": report.get("steps_run"),
            "stopped_by": report.get("stopped_by"),
            "best_step": report.get("best_step"),
            "n_train": report.get("n_train"),
            "n_holdout": report.get("n_holdout"),
            "final_losses": report.get("final_losses"),
        },
        "normal_scores": {k: calibration.get(k) for k in ("n", "mean", "std", "quantile", "max")},
        "threshold": calibration.get("threshold"),
        "threshold_rule": calibration.get("rule"),
        "target_fpr": calibration.get("target_fpr"),
        "expected_fpr": calibration.get("expected_fpr"),
        "defects": calibration.get("defects"),
        "metrics": evaluation.get("metrics", {}),
        "evaluation": evaluation,
        "gate": gate.to_dict() if gate is not None else None,
    }


def publish_trained(ctx: Context, store: LineStore | None, path: Path) -> int | None:
    """Publish the artifact without activating it (the gate decides that); a failure says how
    to publish the saved file later instead of losing the training."""
    if store is None:
        return None
    ctx.out.note(f"publishing {path} to Redis at {store.location}")
    try:
        return store.publish(ctx.args.line, path, activate=False, who=ctx.who)
    except MemkdStreamError as exc:
        raise type(exc)(
            f"{exc}; the trained model is saved as {path}: publish it later with "
            f"`memkd-stream lines publish {ctx.args.line} {path}`",
            code=exc.code,
        ) from exc


def trained_on(images: list[Path], train_config: Any) -> list[str]:
    """Content hashes of the images a fit trained on (not those it held out to calibrate):
    the activation gate leaves them out when it compares versions."""
    from memkd.train import holdout_split

    train_idx, _ = holdout_split(len(images), train_config)
    return fingerprints([images[i] for i in train_idx])


def _readable_dataset(root: Path, roi: Any, min_images: int, out: Output) -> DatasetInput:
    dataset = resolve_dataset(root)
    good, bad = check_readable(dataset.train, roi)
    dataset.train, dataset.unreadable = good, bad
    if bad:
        out.warn(f"skipping {len(bad)} unusable image(s) of {root}:")
        for item in bad[:SHOWN_UNREADABLE]:
            out.note(f"  {item.path}: {item.reason}")
        if len(bad) > SHOWN_UNREADABLE:
            out.note(f"  ... and {len(bad) - SHOWN_UNREADABLE} more (see --json)")
    if len(good) < min_images:
        where = f"{root}/train/good" if dataset.kind == "mvtec" else str(root)
        raise DatasetError(
            f"only {len(good)} usable good image(s) in {where} ({len(bad)} unusable); "
            f"need at least {min_images} to train and calibrate a line"
        )
    return dataset


def _print_report(console: Console, data: dict[str, Any]) -> None:
    training, scores = data["training"], data["normal_scores"]
    if data["version"] is None:
        where = "not published (--no-publish)"
    elif data["active"]:
        where = f"published as {data['line']}@{data['version']} and activated"
    else:
        where = f"published as {data['line']}@{data['version']} (not activated)"
    console.print(f"line {data['line']}: {where}")
    if data.get("parent"):
        console.print(f"a delta of {data['parent']} (memory-only refit)")
    rows = [
        ("artifact", f"{data['artifact']} (sha256 {data['sha256'][:12]})"),
        (
            "backbone / device / precision",
            f"{data['backbone']} / {data['device']} / {data['precision']}",
        ),
        (
            "images",
            f"{data['dataset']['n_train_images']} good ({training['n_train']} train, "
            f"{training['n_holdout']} held out for calibration), "
            f"{len(data['dataset']['unreadable'])} skipped",
        ),
        ("training", _training_line(training)),
        *([("tiling", _tiling_text(data["tiling"]))] if data.get("tiling") else []),
        ("final losses", _fmt_map(training["final_losses"])),
        (
            "normal scores",
            f"mean {_g(scores['mean'])}  std {_g(scores['std'])}  "
            f"q {_g(scores['quantile'])}  max {_g(scores['max'])}  (n={scores['n']})",
        ),
        ("threshold", threshold_text(data)),
    ]
    if data["defects"]:
        rows.append(("defective examples", defects_text(data["defects"])))
    evaluation = data["evaluation"]
    if evaluation:
        rows.append(
            (
                "test metrics",
                f"{_fmt_map(evaluation['metrics'])}  "
                f"({evaluation['n_good']} good, {evaluation['n_bad']} defective)",
            )
        )
        rows.append(("at threshold", at_threshold_text(evaluation.get("at_threshold") or {})))
    console.print(Output.table(["", ""], rows))
    if data.get("gate"):
        print_gate(console, data["gate"], data["line"])


def _tiling_text(tiling: dict[str, int]) -> str:
    return (
        f"{tiling['size']} px tiles, {tiling['overlap']} px overlap; threshold on frame scores "
        "(max over a frame's tiles)"
    )


def threshold_text(data: dict[str, Any]) -> str:
    """The threshold, its rule and the false-alarm rate it is expected to give."""
    text = f"{_g(data['threshold'])} ({data['threshold_rule']}"
    if data.get("target_fpr") is not None:
        text += f", set for {_pct(data['target_fpr'])} false alarms"
    text += ")"
    if data.get("expected_fpr") is not None:
        text += f"; expected false alarms on good images: {_pct(data['expected_fpr'])}"
    return text


def defects_text(defects: dict[str, Any]) -> str:
    """What the defective examples said about the threshold."""
    return (
        f"{int(defects['n'])}: {_pct(defects['recall'])} caught at the threshold (miss rate "
        f"{_pct(defects['miss_rate'])}); best F1 {defects['best_f1']:.2f} at threshold "
        f"{_g(defects['best_f1_threshold'])} (catches {_pct(defects['best_f1_recall'])})"
    )


def _pct(value: float) -> str:
    return f"{100 * value:.3g} %"


def _defect_examples(folder: Path | None, roi: Any, out: Output) -> list[Path]:
    if folder is None:
        return []
    dataset = resolve_dataset(folder)
    good, bad = check_readable(dataset.train, roi)
    for item in bad[:SHOWN_UNREADABLE]:
        out.warn(f"defect example skipped: {item.path}: {item.reason}")
    if not good:
        raise DatasetError(f"no usable defective example images in {folder}")
    return good


def _calibrate_on_defects(
    ctx: Context, model: Any, teacher: Any, dataset: DatasetInput, paths: list[Path],
    precision: Any,
) -> None:  # fmt: skip
    """Score the defective examples (--defects, an MVTec test split's defective images) and
    record what they say; with --threshold-from defects, take their best-F1 threshold."""
    from memkd_stream.cli.scoring import score_paths

    examples = list(paths)
    if dataset.has_labels:
        examples += [Path(t.path) for t in dataset.category.test if t.label == 1]
    if not examples or model.calibration is None:
        return
    scored = score_paths(model, teacher, examples, ctx.args.batch_size, precision)
    calibration = model.calibration.with_defects(scored.scores)
    if ctx.args.threshold_from == "defects" and calibration.defects is not None:
        best = calibration.defects["best_f1_threshold"]
        calibration = calibration.with_threshold(best, rule="best_f1").with_defects(scored.scores)
    model.calibration = calibration


def at_threshold_text(at: dict[str, Any]) -> str:
    """``flagged_bad``/``false_alarms`` shares as a sentence."""
    if not at:
        return "-"

    def pct(v: Any) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}%"

    return (
        f"{pct(at.get('flagged_bad'))} of defective images flagged, "
        f"{pct(at.get('false_alarms'))} of good images falsely flagged"
    )


def _g(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else str(value)


def _training_line(training: dict[str, Any]) -> str:
    run, planned = training.get("steps_run") or training["steps"], training["steps"]
    text = f"{run} of {planned} steps" if run != planned else f"{planned} steps"
    text += f" in {training['seconds']} s"
    if training.get("stopped_by") == "max_seconds":
        text += " (stopped at --max-minutes)"
    if training.get("best_step"):
        text += f"; kept the student of step {training['best_step']} (lowest held-out KD loss)"
    return text


def _fmt_map(values: dict[str, Any] | None) -> str:
    return "  ".join(f"{k} {_g(v)}" for k, v in (values or {}).items()) or "-"


class _Progress:
    """A rich progress bar on a terminal; a note every ~10% otherwise."""

    def __init__(self, out: Output) -> None:
        self._out = out
        self._bar: Any = None
        self._task: Any = None
        self._last_note = 0

    def __enter__(self) -> _Progress:
        if self._out.interactive:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("training"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self._out.err_console,
                transient=True,
            )
            self._bar.__enter__()
        return self

    def __call__(self, step: int, total: int, losses: dict[str, float]) -> None:
        loss = f"{losses.get('loss', float('nan')):.4f}"
        if self._bar is not None:
            if self._task is None:
                self._task = self._bar.add_task("fit", total=total, loss=loss)
            self._bar.update(self._task, completed=step, loss=loss)
        elif step == total or step - self._last_note >= max(total // 10, 1):
            self._last_note = step
            self._out.note(f"step {step}/{total} loss {loss}")

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

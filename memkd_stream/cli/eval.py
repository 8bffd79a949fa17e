"""``memkd-stream eval``: how well a line model separates good from defective images.

The model comes from Redis (``--line``, the active version unless ``--version``) or from a file
(``--artifact``); both are sha256-checked. On an MVTec-layout category the test split gives
metrics (image AUROC, pixel AUROC, AUPRO@0.3, confusion counts at the line's threshold) and ROC
curves; on a plain folder every image is scored. The output folder gets ``report.json``,
``scores.csv``, ``roc_image.png`` / ``roc_pixel.png`` and ``heatmaps/*.png`` for a sample.
"""

from __future__ import annotations

import argparse
import csv
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console

from memkd_stream.cli.fit import at_threshold_text
from memkd_stream.cli.inputs import (
    PRECISIONS,
    resolve_dataset,
    torch_device,
    torch_precision,
)
from memkd_stream.cli.main import Context, UsageError, line_arg
from memkd_stream.cli.output import Output
from memkd_stream.cli.stored_models import Teachers, file_model, stored_model

if TYPE_CHECKING:
    from memkd_stream.cli.scoring import Scored

__all__ = ["register"]

MAX_ROC_PIXELS = 2_000_000  # the pixel ROC figure subsamples; the AUROC itself uses every pixel


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="metrics, ROC curves and heatmaps of a line model", description=__doc__
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--line", type=line_arg, help="evaluate this line's model from Redis")
    source.add_argument("--artifact", type=Path, metavar="FILE", help="evaluate an artifact file")
    p.add_argument("--version", type=int, help="with --line: this version (default: active)")
    p.add_argument(
        "--parent",
        type=Path,
        metavar="FULL",
        help="with --artifact DELTA: the full artifact file the delta was made from",
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="DIR",
        help="an MVTec-layout category (metrics) or a folder of images (scores only)",
    )
    p.add_argument("--out", type=Path, metavar="DIR", help="output folder (default ./eval-...)")
    p.add_argument("--samples", type=int, default=8, metavar="N", help="heatmaps (default 8)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="default 16")
    p.add_argument(
        "--teacher-weights", "--wrn50-weights", type=Path, metavar="FILE", help="teacher weights"
    )
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: settings model.device)")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="compute precision of scoring (default: settings model.precision); may differ "
        "from the precision the line was calibrated at",
    )
    p.set_defaults(handler=_eval)


def _eval(ctx: Context) -> int:
    args, out = ctx.args, ctx.out
    if args.version is not None and args.line is None:
        raise UsageError("--version needs --line")
    if args.parent is not None and args.artifact is None:
        raise UsageError("--parent goes with --artifact DELTA")
    dataset = resolve_dataset(args.data)  # before loading anything heavy
    device = torch_device(ctx.settings, args.device)
    precision = torch_precision(ctx.settings, args.precision, device)
    teachers = Teachers(ctx.settings, device, args.teacher_weights)
    source, record, model, sha256 = _model(ctx, teachers)
    backbone = str(record["model"]["backbone"])
    teacher = teachers.get(backbone)
    threshold = model.threshold
    if precision != model.calibrated_precision:
        out.note(
            f"scoring at {precision}, but the threshold was calibrated at "
            f"{model.calibrated_precision} (allowed; model/MEMKD.md section 6 gives the parity)"
        )

    from memkd_stream.cli import scoring

    if dataset.kind == "mvtec":
        out.note(f"scoring {len(dataset.category.test)} test images of {dataset.root}")
        scored, evaluation = scoring.evaluate_category(
            model, teacher, dataset.category, args.batch_size, keep_maps=True, precision=precision
        )
    else:
        out.note(f"scoring {len(dataset.train)} images of {dataset.root}")
        scored = scoring.score_paths(model, teacher, dataset.train, args.batch_size, precision)
        evaluation = {}
    for item in scored.skipped:
        out.warn(f"skipped {item.path}: {item.reason}")

    folder = args.out or Path(f"eval-{_slug(source)}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
    folder.mkdir(parents=True, exist_ok=True)
    files = _write_outputs(folder, scored, model, threshold, args.samples)
    anomalous = int((scored.scores >= threshold).sum())
    data = {
        "model": source,
        "sha256": sha256,
        "backbone": backbone,
        "data": str(dataset.root),
        "threshold": threshold,
        "precision": precision.value,
        "calibrated_precision": model.calibrated_precision.value,
        "n_images": len(scored.paths),
        "n_anomalous": anomalous,
        "n_skipped": len(scored.skipped),
        "metrics": evaluation.get("metrics", {}),
        "evaluation": evaluation,
        "score_stats": _stats(scored.scores),
        "out": str(folder),
        "files": files,
    }
    (folder / "report.json").write_text(json.dumps(data, indent=2) + "\n")
    out.result(data, lambda console: _print(console, data))
    return 0


def _model(ctx: Context, teachers: Teachers) -> tuple[str, dict[str, Any], Any, str | None]:
    """(name, record, model, sha256) of the model to evaluate: a file (a delta composed with
    --parent), or a version in Redis (a delta composed with its stored parent)."""
    args = ctx.args
    if args.artifact is not None:
        from memkd.artifact import read_sidecar

        model, record = file_model(args.artifact, args.parent, teachers)
        name = str(args.artifact) + (f" on {args.parent}" if args.parent else "")
        return name, record, model, read_sidecar(args.artifact)
    store = ctx.store()
    version = args.version if args.version is not None else store.current(args.line)
    if version is None:
        store.versions(args.line)  # UnknownLine when the line does not exist
        from memkd_stream.lines.errors import UnknownVersion

        raise UnknownVersion(f"line {args.line} has no active version; pass --version")
    stored = stored_model(store, args.line, version, teachers)
    return stored.ref, stored.record, stored.model, stored.sha256


def _write_outputs(
    folder: Path, scored: Scored, model: Any, threshold: float, samples: int
) -> dict[str, Any]:
    from memkd_stream.cli import figures

    files: dict[str, Any] = {"scores": str(folder / "scores.csv")}
    with (folder / "scores.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "defect", "label", "score", "anomalous"])
        for i, path in enumerate(scored.paths):
            label = "" if scored.labels is None else int(scored.labels[i])
            defect = scored.defects[i] if scored.defects else ""
            score = float(scored.scores[i])
            writer.writerow([path, defect, label, f"{score:.6g}", int(score >= threshold)])

    if scored.labels is not None and len(set(scored.labels.tolist())) == 2:
        from sklearn.metrics import roc_auc_score, roc_curve

        fpr, tpr, _ = roc_curve(scored.labels, scored.scores)
        auroc = roc_auc_score(scored.labels, scored.scores)
        figures.roc_png(folder / "roc_image.png", fpr, tpr, "image-level ROC", auroc)
        files["roc_image"] = str(folder / "roc_image.png")
        assert scored.masks is not None  # evaluate_category(keep_maps=True) filled them
        pixels_true = scored.masks.reshape(-1)
        pixels_score = scored.maps.reshape(-1)
        if pixels_true.any() and not pixels_true.all():
            if pixels_true.size > MAX_ROC_PIXELS:
                pick = np.random.default_rng(0).choice(pixels_true.size, MAX_ROC_PIXELS, False)
                pixels_true, pixels_score = pixels_true[pick], pixels_score[pick]
            fpr, tpr, _ = roc_curve(pixels_true, pixels_score, drop_intermediate=True)
            auroc = roc_auc_score(pixels_true, pixels_score)
            figures.roc_png(folder / "roc_pixel.png", fpr, tpr, "pixel-level ROC", auroc)
            files["roc_pixel"] = str(folder / "roc_pixel.png")

    heatmaps = folder / "heatmaps"
    heatmaps.mkdir(exist_ok=True)
    written = []
    for rank, i in enumerate(_sample(scored, samples)):
        path = scored.paths[i]
        score = float(scored.scores[i])
        verdict = "ANOMALOUS" if score >= threshold else "normal"
        truth = ""
        if scored.labels is not None:
            truth = f"  truth: {scored.defects[i] if scored.labels[i] else 'good'}"
        caption = [f"{path}{truth}", f"score {score:.4g}  threshold {threshold:.4g}  {verdict}"]
        mask = scored.masks[i] if scored.masks is not None else None
        panel = figures.overlay_panel(
            _view(path, model), scored.maps[i], threshold, caption, mask=mask
        )
        prefix = f"{scored.defects[i]}_" if scored.defects else ""
        name = heatmaps / f"{rank:02d}_{prefix}{path.stem}.png"
        panel.save(name)
        written.append(str(name))
    files["heatmaps"] = written
    return files


def _view(path: Path, model: Any) -> Any:
    from memkd_stream.cli.scoring import model_view

    return model_view(path, model)


def _sample(scored: Scored, n: int) -> list[int]:
    """Which images get a heatmap: defects spread over the list (so every kind shows up) and the
    highest-scoring good images (the likely false alarms); the top scores without labels."""
    if n <= 0 or not len(scored.paths):
        return []
    order = np.argsort(-scored.scores, kind="stable")
    if scored.labels is None:
        return [int(i) for i in order[:n]]
    bad = np.flatnonzero(scored.labels == 1)
    good = [int(i) for i in order if scored.labels[i] == 0]
    n_bad = min(len(bad), max(n - min(len(good), n // 2), 0))
    picks = [int(bad[j]) for j in np.linspace(0, len(bad) - 1, n_bad).round().astype(int)]
    picks = list(dict.fromkeys(picks))
    return picks + good[: n - len(picks)]


def _stats(scores: np.ndarray) -> dict[str, float | None]:
    if not scores.size:
        return {"min": None, "mean": None, "max": None}
    return {
        "min": float(scores.min()),
        "mean": float(scores.mean()),
        "max": float(scores.max()),
    }


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(text).stem)


def _print(console: Console, data: dict[str, Any]) -> None:
    console.print(
        f"{data['model']} on {data['data']}: {data['n_images']} images, "
        f"{data['n_anomalous']} at or above the threshold {data['threshold']:.4g} "
        f"(scored at {data['precision']}, calibrated at {data['calibrated_precision']})"
    )
    evaluation = data["evaluation"]
    if evaluation:
        rows = [(name, "all", _metric(value)) for name, value in evaluation["metrics"].items()]
        for defect, values in evaluation.get("per_defect", {}).items():
            rows.append(
                ("image_auroc", f"{defect} (n={values['n']:.0f})", _metric(values["image_auroc"]))
            )
        rows.append(("at threshold", "", at_threshold_text(evaluation.get("at_threshold") or {})))
        console.print(Output.table(["METRIC", "IMAGES", "VALUE"], rows))
    console.print(f"wrote report.json, scores.csv and figures to {data['out']}")


def _metric(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"

"""What bf16 costs or buys on this machine: parity with fp32, scoring speed, fit time.

Figures, not a test (DESIGN.md §7, model/MEMKD.md §6). Four parts, each one row per point, all
written to bench/results/precision.csv (and a summary to bench/results/precision.md):

- ``parity``: a lite0 line fitted at fp32 on each generated category (the data of
  bench/accuracy.py: data seed 0, 60 training images, 12 good + 24 defective test images) scores
  its test images at fp32 and at bf16: image AUROC of each, identical verdicts at the line's
  threshold, Pearson correlation of all map pixels. A diagnostic row, ``bf16-student`` (not a
  setting), runs the teacher at fp32 and only the student under bf16, to show which half the
  difference comes from.
- ``wrn50``: WRN50 with random weights and an untrained student (no WRN50 fit fits this CPU):
  map correlation fp32 vs bf16 only, on generated test images at 256 px.
- ``speed``: ``LineModel.score`` images/s at fp32, bf16 and auto side by side, repetitions
  interleaved (fp32, bf16, auto, fp32, ...) and the best kept, so that load from other processes
  hurts all three alike. ``--clock cpu --threads 1`` times the process's own CPU time.
- ``fit``: fit wall and CPU time at fp32 and bf16 on one category, one seed. The seconds to the
  first step (data, teacher features, first step) and the seconds per step are measured, and the
  time of ``--fit-target-steps`` (today's default, 300) is extrapolated from them when fewer
  steps were run.

bf16 on a CPU without native bf16 (AVX-512 BF16 / AMX / Arm bf16) is emulated by oneDNN: it
still runs, many times slower than fp32; ``auto`` resolves to fp32 there (the rows say which).

    .venv/bin/python bench/precision.py                       # all parts, 4 categories
    .venv/bin/python bench/precision.py --quick               # 1 category, short, small
    .venv/bin/python bench/precision.py --parts speed --clock cpu --threads 1
"""

from __future__ import annotations

import argparse
import csv
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from memkd.anomaly import AnomalyResult, anomaly_result
from memkd.backbones import Teacher, load_teacher
from memkd.config import ModelConfig, TrainConfig
from memkd.datasets import SYNTH_CATEGORIES, Category, read_mvtec_category, synth_dataset
from memkd.line_model import LineModel
from memkd.metrics import image_auroc
from memkd.network import MemKDStudent
from memkd.precision import autocast, cpu_native_bf16, resolve_precision
from memkd.train import fit, load_batch

RESULTS = Path(__file__).resolve().parent / "results"
LITE0, WRN50 = "tf_efficientnet_lite0", "wide_resnet50_2"
PARTS = ("parity", "wrn50", "speed", "fit")
FIELDS = [
    "part", "backbone", "category", "precision", "input_size", "steps", "batch", "n_images",
    "image_auroc", "image_auroc_fp32", "verdict_agreement", "n_flagged_fp32",
    "map_correlation", "images_per_s", "ms_per_batch", "fit_wall_s", "fit_cpu_s",
    "first_step_s", "s_per_step", "target_steps", "target_steps_wall_s_est", "device",
    "threads", "clock", "cpu_native_bf16", "auto_is", "torch", "note",
]  # fmt: skip
CLOCK: Callable[[], float] = time.perf_counter


def _common() -> dict[str, object]:
    return {
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "clock": "cpu" if CLOCK is time.process_time else "wall",
        "cpu_native_bf16": cpu_native_bf16(),
        "auto_is": resolve_precision("auto", "cpu").value,
        "torch": torch.__version__,
    }


def _category(data: Path, name: str) -> Category:
    """The generated category bench/accuracy.py uses (data seed 0), generated when missing."""
    if not (data / name).exists():
        synth_dataset(data, [name], seed=0, n_train=60)
    return read_mvtec_category(data / name)


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.flatten().double().numpy(), b.flatten().double().numpy())[0, 1])


def _untrained(teacher: Teacher, size: int) -> LineModel:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=teacher.name, input_size=size)
    student = MemKDStudent(cfg, teacher.channels, teacher.spec.signed_features)
    return LineModel(cfg, student, teacher.describe()).to("cpu")


def parity(args: argparse.Namespace, lite0: Teacher) -> list[dict[str, object]]:
    """fp32 vs bf16 scoring of a line fitted at fp32, per category."""
    rows = []
    for name in args.categories.split(","):
        category = _category(args.data, name)
        tcfg = TrainConfig(steps=args.steps, seed=0, precision="fp32")
        model = fit(
            category.train, ModelConfig(backbone=lite0.name, input_size=args.size), tcfg, lite0
        ).model
        x = load_batch([item.path for item in category.test], args.size, model.mean, model.std)
        labels = [item.label for item in category.test]
        ref = _score_all(model, lite0, x, "fp32")
        flagged = ref.scores >= model.threshold
        for variant, low in (
            ("bf16", _score_all(model, lite0, x, "bf16")),
            ("bf16-student", _student_bf16(model, lite0, x)),
        ):
            rows.append(
                {
                    "part": "parity", "backbone": LITE0, "category": name, "precision": variant,
                    "input_size": args.size, "steps": args.steps, "n_images": len(labels),
                    "image_auroc": round(image_auroc(labels, low.scores.numpy()), 4),
                    "image_auroc_fp32": round(image_auroc(labels, ref.scores.numpy()), 4),
                    "verdict_agreement": round(float((flagged == (low.scores >= model.threshold))
                                                     .float().mean()), 4),
                    "n_flagged_fp32": int(flagged.sum()),
                    "map_correlation": round(_correlation(ref.maps, low.maps), 5),
                    "note": "line fitted at fp32" + ("; diagnostic: teacher at fp32"
                                                     if variant != "bf16" else ""),
                    **_common(),
                }
            )  # fmt: skip
            _print(rows[-1])
    return rows


def _student_bf16(model: LineModel, teacher: Teacher, x: torch.Tensor) -> AnomalyResult:
    """LineModel.score with the teacher at fp32 and only the student under bf16 autocast."""
    with torch.inference_mode():
        x = x.contiguous(memory_format=torch.channels_last)
        t_feats = teacher(x)
        with autocast("cpu", "bf16"):
            s_feats = model.student(t_feats)
        return anomaly_result(t_feats, s_feats, tuple(x.shape[-2:]))


def _score_all(
    model: LineModel, teacher: Teacher, x: torch.Tensor, precision: str
) -> AnomalyResult:
    parts = [model.score(teacher, x[i : i + 16], precision) for i in range(0, len(x), 16)]
    return AnomalyResult(torch.cat([p.maps for p in parts]), torch.cat([p.scores for p in parts]))


def wrn50(args: argparse.Namespace) -> list[dict[str, object]]:
    """Map correlation fp32 vs bf16 for WRN50 (random weights, untrained student)."""
    torch.manual_seed(0)
    teacher = load_teacher(WRN50, random_weights=True)
    model = _untrained(teacher, args.wrn50_size)
    items = [
        item
        for name in args.categories.split(",")
        for item in _category(args.data, name).test[: args.wrn50_images]
    ]
    x = load_batch([item.path for item in items], args.wrn50_size, teacher.mean, teacher.std)
    ref, low = (_score_all(model, teacher, x, p) for p in ("fp32", "bf16"))
    row = {
        "part": "wrn50", "backbone": WRN50, "category": args.categories, "precision": "bf16",
        "input_size": args.wrn50_size, "n_images": len(items),
        "map_correlation": round(_correlation(ref.maps, low.maps), 5),
        "note": "random teacher weights, untrained student", **_common(),
    }  # fmt: skip
    _print(row)
    return [row]


def speed(args: argparse.Namespace, lite0: Teacher) -> list[dict[str, object]]:
    """images/s of LineModel.score at fp32, bf16 and auto, repetitions interleaved."""
    points = [(LITE0, lite0, b) for b in args.batches]
    if args.speed_wrn50:
        torch.manual_seed(0)
        points.append((WRN50, load_teacher(WRN50, random_weights=True), 1))
    rows = []
    for backbone, teacher, batch in points:
        model = _untrained(teacher, args.size_speed)
        x = torch.randn(batch, 3, args.size_speed, args.size_speed)
        best = dict.fromkeys(("fp32", "bf16", "auto"), float("inf"))
        for precision in best:  # warm-up: oneDNN builds its kernels on the first call
            model.score(teacher, x, precision)
        for _ in range(args.reps):
            for precision in best:
                start = CLOCK()
                model.score(teacher, x, precision)
                best[precision] = min(best[precision], CLOCK() - start)
        for precision, sec in best.items():
            rows.append(
                {
                    "part": "speed", "backbone": backbone, "precision": precision,
                    "input_size": args.size_speed, "batch": batch,
                    "images_per_s": round(batch / sec, 2), "ms_per_batch": round(1000 * sec, 1),
                    "note": f"best of {args.reps}"
                    + (", random weights" if backbone == WRN50 else ""),
                    **_common(),
                }
            )  # fmt: skip
            _print(rows[-1])
    return rows


def fit_time(args: argparse.Namespace, lite0: Teacher) -> list[dict[str, object]]:
    """Wall and CPU seconds of fit at fp32 and bf16 on one category, one seed."""
    category = _category(args.data, args.categories.split(",")[0])
    rows = []
    for precision in ("fp32", "bf16"):
        ticks: list[float] = []
        wall, cpu = time.perf_counter(), time.process_time()
        fit(
            category.train,
            ModelConfig(backbone=LITE0, input_size=args.fit_size),
            TrainConfig(steps=args.fit_steps, seed=0, precision=precision),
            lite0,
            progress=lambda step, total, losses, ticks=ticks: ticks.append(time.perf_counter()),
        )
        wall_s, cpu_s = time.perf_counter() - wall, time.process_time() - cpu
        per_step = (ticks[-1] - ticks[0]) / max(len(ticks) - 1, 1)
        estimate = wall_s + (args.fit_target_steps - args.fit_steps) * per_step
        rows.append(
            {
                "part": "fit", "backbone": LITE0, "category": category.name,
                "precision": precision, "input_size": args.fit_size, "steps": args.fit_steps,
                "batch": TrainConfig().batch_size, "n_images": len(category.train),
                "fit_wall_s": round(wall_s, 1), "fit_cpu_s": round(cpu_s, 1),
                "first_step_s": round(ticks[0] - wall, 1), "s_per_step": round(per_step, 2),
                "target_steps": args.fit_target_steps,
                "target_steps_wall_s_est": round(estimate, 0),
                "note": "measured" if args.fit_steps == args.fit_target_steps else
                f"{args.fit_target_steps} steps extrapolated from {args.fit_steps}",
                **_common(), "clock": "wall",
            }
        )  # fmt: skip
        _print(rows[-1])
    return rows


def _print(row: dict[str, object]) -> None:
    shown = {k: v for k, v in row.items() if v not in ("", None) and k not in ("torch", "device")}
    print(", ".join(f"{k}={v}" for k, v in shown.items()), flush=True)


def _summary(rows: list[dict[str, object]]) -> str:
    lines = ["| part | backbone | category | precision | figures |", "|---|---|---|---|---|"]
    keys = ("image_auroc_fp32", "image_auroc", "verdict_agreement", "map_correlation",
            "images_per_s", "batch", "fit_wall_s", "fit_cpu_s", "s_per_step",
            "target_steps_wall_s_est")  # fmt: skip
    for r in rows:
        figures = ", ".join(f"{k} {r[k]}" for k in keys if r.get(k) not in (None, ""))
        lines.append(f"| {r['part']} | {r['backbone']} | {r.get('category', '')} | "
                     f"{r['precision']} | {figures} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 category, short, small")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--categories", default=",".join(SYNTH_CATEGORIES))
    parser.add_argument("--steps", type=int, default=60, help="parity: fit steps per category")
    parser.add_argument("--size", type=int, default=128, help="parity: model input side")
    parser.add_argument("--wrn50-size", type=int, default=256)
    parser.add_argument("--wrn50-images", type=int, default=2, help="per category")
    parser.add_argument("--size-speed", type=int, default=256)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--speed-wrn50", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--fit-size", type=int, default=256)
    parser.add_argument("--fit-steps", type=int, default=TrainConfig.DEFAULT_STEPS)
    parser.add_argument("--fit-target-steps", type=int, default=TrainConfig.DEFAULT_STEPS)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="speed part")
    parser.add_argument("--data", type=Path, default=RESULTS / "synth-data")
    parser.add_argument("--tag", default="precision", help="output file stem")
    args = parser.parse_args(argv)
    if args.quick:
        args.categories, args.steps, args.size, args.reps = "grass", 20, 64, 2
        args.wrn50_size, args.wrn50_images, args.size_speed = 128, 2, 128
        args.batches, args.speed_wrn50, args.fit_size, args.fit_steps = "1", False, 64, 5
    args.batches = [int(b) for b in str(args.batches).split(",")]
    parts = args.parts.split(",")
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {list(PARTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        global CLOCK
        CLOCK = time.process_time
    print(f"cpu native bf16: {cpu_native_bf16()}; auto resolves to "
          f"{resolve_precision('auto', 'cpu')} on this CPU ({platform.machine()}, "
          f"{torch.get_num_threads()} threads)", flush=True)  # fmt: skip
    lite0 = load_teacher(LITE0)
    run = {
        "parity": lambda: parity(args, lite0),
        "wrn50": lambda: wrn50(args),
        "speed": lambda: speed(args, lite0),
        "fit": lambda: fit_time(args, lite0),
    }
    rows: list[dict[str, object]] = []
    for part in parts:
        rows += run[part]()
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f"{args.tag}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    table = _summary(rows)
    (RESULTS / f"{args.tag}.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What a memory-only refit buys after a shift in the good images, and what shadow scoring costs.

Figures, not a test (issue 16; DESIGN.md §5). Two parts, one row each in
bench/results/refit.json and a summary in bench/results/refit.md:

- ``shift``: a lite0 line is fitted (``--steps``, full fit) on a generated category; then every
  image of that category (train and test, good and defective) is shifted the way a plant's
  lighting changes (``--shift``: darker, warmer and less contrasted, or a coarser texture:
  ``texture``). On the shifted test split: the old model as it is, a memory-only refit of it on
  the shifted good images (``memkd.refit``, ``--memory-steps``, what ``fit --memory-only``
  runs), and a full refit from scratch on them (``--steps``). Image AUROC, false alarms on good
  images and missed defects at each model's own threshold, balanced accuracy, wall time, and
  the time ratio memory-only / full.
- ``shadow``: ``Engine.score_batch``'s shadow path, one teacher forward and two students
  (``teacher_features`` + ``score_features`` twice), against plain scoring
  (``LineModel.score``), on the same batch; repetitions interleaved and the best kept, so load
  from other processes hurts both alike. Ratio > 1 is the shadow's cost.

    .venv/bin/python bench/refit.py                                # grass, lighting shift
    .venv/bin/python bench/refit.py --categories grass gravel --shift texture
    .venv/bin/python bench/refit.py --quick                        # a smoke run, a minute

Generated data goes to --work (default /tmp/memkd-bench-refit), never into the repository.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

LITE0 = "tf_efficientnet_lite0"  # the teacher this benchmark's figures were measured with

RESULTS = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------------------ the shift
def shift_image(pixels: np.ndarray, kind: str) -> np.ndarray:
    """A plant-like change of the good images: ``lighting`` (a darker, warmer, flatter light)
    or ``texture`` (the surface seen coarser: a 1.25x zoom, as from a new supplier's stock)."""
    image = pixels.astype(np.float32) / 255.0
    if kind == "lighting":
        mean = image.mean(axis=(0, 1), keepdims=True)
        image = mean + 0.7 * (image - mean)  # less contrast
        image = image * np.array([1.0, 0.85, 0.65], dtype=np.float32) * 0.8  # warmer, darker
        image = np.clip(image, 0, 1) ** 1.2
    elif kind == "texture":
        h, w = image.shape[:2]
        zoom = Image.fromarray((image * 255).astype(np.uint8)).resize(
            (int(w * 1.25), int(h * 1.25)), Image.BICUBIC
        )
        top, left = (zoom.height - h) // 2, (zoom.width - w) // 2
        image = np.asarray(zoom, dtype=np.float32)[top : top + h, left : left + w] / 255.0
    else:
        raise ValueError(f"unknown shift {kind!r}")
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def shifted_copy(category: Path, out: Path, kind: str) -> Path:
    """The category with every image shifted (masks copied as they are: the defects stay put,
    except under ``texture``, whose zoom moves them: its defective images are re-masked by the
    same zoom)."""
    if out.exists():
        shutil.rmtree(out)
    for path in sorted(category.rglob("*.png")):
        target = out / path.relative_to(category)
        target.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.asarray(Image.open(path))
        if "ground_truth" in path.parts:
            if kind == "texture":
                shifted = shift_image(np.repeat(pixels[..., None], 3, axis=2), kind)[..., 0]
                Image.fromarray(np.where(shifted > 127, 255, 0).astype(np.uint8)).save(target)
            else:
                shutil.copyfile(path, target)
            continue
        rgb = pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=2)
        Image.fromarray(shift_image(rgb[..., :3], kind)).save(target)
    return out


# ------------------------------------------------------------------------------ figures
def figures(model: Any, teacher: Any, category: Any) -> dict[str, float | None]:
    from memkd.evaluate import evaluate

    report = evaluate(model, teacher, category, batch_size=16, precision="fp32")
    good = [r for r in report.records if r.label == 0]
    bad = [r for r in report.records if r.label == 1]
    far = float(np.mean([r.flagged for r in good])) if good else None
    miss = float(np.mean([not r.flagged for r in bad])) if bad else None
    balanced = 1 - (far + miss) / 2 if far is not None and miss is not None else None
    return {
        "image_auroc": round(float(report.metrics["image_auroc"]), 4),
        "pixel_auroc": round(float(report.metrics.get("pixel_auroc", float("nan"))), 4),
        "false_alarm_rate": far,
        "miss_rate": miss,
        "balanced_accuracy": balanced,
        "threshold": report.threshold,
    }


def timed(run: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = run()
    return result, time.perf_counter() - started


# ------------------------------------------------------------------------------ parts
def shift_part(args: argparse.Namespace, teacher: Any, category_name: str) -> dict[str, Any]:
    from memkd.config import ModelConfig, TrainConfig
    from memkd.datasets import read_mvtec_category, synth_dataset
    from memkd.refit import refit_memory
    from memkd.train import fit

    data = args.work / "data"
    (original,) = synth_dataset(
        data, categories=(category_name,), seed=args.seed, n_train=args.n_train,
        n_test_good=args.n_test, n_test_bad=args.n_test, size=args.size, overwrite=True,
    )  # fmt: skip
    shifted = shifted_copy(Path(original), args.work / f"shifted-{args.shift}" / category_name,
                           args.shift)  # fmt: skip
    before, after = read_mvtec_category(original), read_mvtec_category(shifted)

    def config(steps: int) -> TrainConfig:
        return TrainConfig(steps=steps, batch_size=16, seed=args.seed, device="cpu",
                           precision="fp32")  # fmt: skip

    model_config = ModelConfig(backbone=LITE0, input_size=args.input_size)
    old, full_s = timed(lambda: fit(before.train, model_config, config(args.steps), teacher).model)
    mem, mem_s = timed(
        lambda: refit_memory(old, after.train, teacher, config(args.memory_steps)).model
    )
    new, new_s = timed(lambda: fit(after.train, model_config, config(args.steps), teacher).model)
    row = {
        "part": "shift",
        "category": category_name,
        "shift": args.shift,
        "input_size": args.input_size,
        "n_train": len(before.train),
        "n_test": len(after.test),
        "full_steps": args.steps,
        "memory_steps": args.memory_steps,
        "old_on_original": figures(old, teacher, before),
        "old_on_shifted": figures(old, teacher, after),
        "memory_refit_on_shifted": figures(mem, teacher, after),
        "full_refit_on_shifted": figures(new, teacher, after),
        "seconds": {
            "full_fit_original": round(full_s, 1),
            "memory_refit": round(mem_s, 1),
            "full_refit": round(new_s, 1),
        },
    }
    row["time_ratio_memory_over_full"] = round(mem_s / new_s, 3)
    return row


def shadow_part(args: argparse.Namespace, teacher: Any) -> dict[str, Any]:
    from memkd.config import ModelConfig
    from memkd.line_model import LineModel
    from memkd.network import MemKDStudent

    torch.manual_seed(args.seed)
    config = ModelConfig(backbone=LITE0, input_size=args.input_size)
    models = [  # untrained weights: the same arithmetic as trained ones
        LineModel(
            config,
            MemKDStudent(config, teacher.channels, teacher.spec.signed_features),
            teacher.describe(),
        )
        for _ in range(2)
    ]
    batch = torch.randn(args.shadow_batch, 3, args.input_size, args.input_size)
    plain_best, shadow_best = float("inf"), float("inf")
    with torch.inference_mode():
        for _ in range(args.repeats):
            _, plain = timed(lambda: models[0].score(teacher, batch, "fp32"))

            def both() -> None:
                features = models[0].teacher_features(teacher, batch, "fp32")
                models[0].score_features(features, "fp32")
                models[1].score_features(features, "fp32")

            _, shadowed = timed(both)
            plain_best, shadow_best = min(plain_best, plain), min(shadow_best, shadowed)
    return {
        "part": "shadow",
        "input_size": args.input_size,
        "batch": args.shadow_batch,
        "repeats": args.repeats,
        "plain_ms": round(1000 * plain_best, 1),
        "with_shadow_ms": round(1000 * shadow_best, 1),
        "ratio": round(shadow_best / plain_best, 3),
    }


def summary(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"# Memory-only refit and shadow cost ({meta['when']}, {meta['machine']})", ""]
    for row in rows:
        if row["part"] == "shadow":
            lines += [
                f"Shadow scoring, lite0 at {row['input_size']} px, batch {row['batch']}: "
                f"{row['plain_ms']} ms plain, {row['with_shadow_ms']} ms with a shadow "
                f"(x{row['ratio']}; best of {row['repeats']}).",
                "",
            ]
            continue
        secs = row["seconds"]
        lines += [
            f"## {row['category']}, {row['shift']} shift ({row['input_size']} px, "
            f"{row['n_train']} train images, {row['n_test']} test images)",
            "",
            "| model | image AUROC | false alarms | missed | balanced acc. | seconds |",
            "|---|---|---|---|---|---|",
        ]
        cases = (
            ("old, original test", "old_on_original", secs["full_fit_original"]),
            ("old, shifted test", "old_on_shifted", None),
            (f"memory-only refit ({row['memory_steps']} steps)", "memory_refit_on_shifted",
             secs["memory_refit"]),
            (f"full refit ({row['full_steps']} steps)", "full_refit_on_shifted",
             secs["full_refit"]),
        )  # fmt: skip
        for label, key, seconds in cases:
            f = row[key]
            lines.append(
                f"| {label} | {f['image_auroc']:.3f} | {_pct(f['false_alarm_rate'])} | "
                f"{_pct(f['miss_rate'])} | {_num(f['balanced_accuracy'])} | "
                f"{'' if seconds is None else seconds} |"
            )
        lines += ["", f"memory-only / full refit time: {row['time_ratio_memory_over_full']}", ""]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--categories", nargs="+", default=["grass"])
    p.add_argument("--shift", choices=("lighting", "texture"), default="lighting")
    p.add_argument("--steps", type=int, default=300, help="full fit steps (default 300)")
    p.add_argument("--memory-steps", type=int, default=60, help="as fit --memory-only (60)")
    p.add_argument("--size", type=int, default=160, help="generated image side (160)")
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--n-train", type=int, default=48)
    p.add_argument("--n-test", type=int, default=12, help="good and defective test images each")
    p.add_argument("--shadow-batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--parts", nargs="+", choices=("shift", "shadow"), default=["shift", "shadow"])
    p.add_argument("--work", type=Path, default=Path("/tmp/memkd-bench-refit"))
    p.add_argument("--quick", action="store_true", help="tiny schedule: checks the script runs")
    p.add_argument("--out", type=Path, default=RESULTS / "refit")
    args = p.parse_args()
    if args.quick:
        args.steps, args.memory_steps, args.n_train, args.n_test, args.repeats = 6, 3, 16, 4, 2
    if args.threads:
        torch.set_num_threads(args.threads)

    from memkd.backbones import load_teacher

    teacher = load_teacher("tf_efficientnet_lite0", None, device="cpu")
    rows = []
    if "shadow" in args.parts:
        rows.append(shadow_part(args, teacher))
        print(json.dumps(rows[-1]), flush=True)
    if "shift" in args.parts:
        for name in args.categories:
            rows.append(shift_part(args, teacher, name))
            print(json.dumps(rows[-1]), flush=True)
    meta = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, cpu",
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    text = summary(rows, meta)
    args.out.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

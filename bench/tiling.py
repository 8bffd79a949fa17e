"""Tiling on large frames with small defects: accuracy and cost per frame, tiled vs untiled.

Figures, not a test. The data is generated here (never committed): large good frames are views
of a generated texture category (``memkd.datasets.synth_image``) rendered at ``--frame`` pixels;
a defective frame is a good frame with one small defect patch pasted in: a ``--patch`` pixel
crop of the frame gets one synthetic defect (``memkd.datasets.defects.paint_defect``, sized for
that crop, i.e. a few to a few dozen pixels) and goes back where it came from, its mask with it.
So the defect is small against the frame, as on a line camera's 2-12 MP frame.

Two lines per category, same good frames, seed and schedule:

- **untiled**: the frame resized to ``--whole-size`` (256, the default input);
- **tiled**: ``Tiling(--tile, --overlap)`` at full resolution (input = tile size), trained on
  the tiles of the good frames and calibrated on frame scores (max over a frame's tiles).

Per line: image AUROC, pixel AUROC and AUPRO (``memkd.evaluate``, masks over the stitched map),
what the calibrated threshold does (defective frames flagged, good frames falsely flagged), fit
time, and scoring time per frame (decode + preprocess or cut + forward + stitch, CPU, fp32,
``--threads`` threads). The last rows are the ratios tiled / untiled. Rows go to
``bench/results/tiling.csv`` and a Markdown table to stdout.

``--timing`` measures only the cost per frame, more robustly on a shared machine: untrained
line models of both kinds (the weights do not change the work) score the same generated frames
from their PNG bytes, alternating tiled and untiled frame by frame for ``--reps`` rounds, so
that load from other processes hits both alike; it reports the median ms per frame and their
ratio.

    .venv/bin/python bench/tiling.py                       # grass, 768 px frames, 128 px tiles
    .venv/bin/python bench/tiling.py --categories grass,brick --steps 300
    .venv/bin/python bench/tiling.py --quick               # a smoke run (minutes)
    .venv/bin/python bench/tiling.py --timing --reps 5     # cost per frame only
"""

from __future__ import annotations

import argparse
import csv
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from memkd.backbones import load_teacher
from memkd.config import ModelConfig, TrainConfig
from memkd.datasets import read_mvtec_category
from memkd.datasets.defects import Scene, paint_defect
from memkd.datasets.synth import synth_image
from memkd.evaluate import evaluate
from memkd.tiling import Tiling
from memkd.train import fit
from PIL import Image

LITE0 = "tf_efficientnet_lite0"  # the teacher this benchmark's figures were measured with

RESULTS = Path(__file__).resolve().parent / "results"
KINDS = ("scratch", "crack", "hole", "stain", "color")  # those that need only the texture


def _save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG", compress_level=1)


def _frame(category: str, seed: int, split: str, index: int, size: int) -> np.ndarray:
    """A good frame (float RGB 0..1) with sensor noise, as the synthetic set makes them."""
    image, _, _, _ = synth_image(category, seed, split, index, size)
    rng = np.random.default_rng([seed, zlib.crc32(category.encode()), index, 7])
    noise = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(0.005)
    return np.clip(image + noise, 0, 1)


def _with_defect(
    frame: np.ndarray, kind: str, patch: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The frame with one defect painted on a ``patch`` px crop at a random place; its mask."""
    h, w = frame.shape[:2]
    y, x = int(rng.integers(0, h - patch)), int(rng.integers(0, w - patch))
    crop = frame[y : y + patch, x : x + patch].copy()
    painted, small = paint_defect(kind, crop, rng, Scene(allowed=np.ones((patch, patch), bool)))
    out = frame.copy()
    out[y : y + patch, x : x + patch] = painted
    mask = np.zeros((h, w), dtype=bool)
    mask[y : y + patch, x : x + patch] = small
    return out, mask


def make_category(root: Path, category: str, args: argparse.Namespace) -> Path:
    """An MVTec-layout folder of large frames (kept between runs with the same parameters)."""
    folder = root / f"{category}-f{args.frame}-p{args.patch}-n{args.n_train}-{args.n_test}"
    if (folder / "done").is_file():
        return folder
    size, seed = args.frame, args.seed
    for i in range(args.n_train):
        _save(folder / "train/good" / f"{i:03d}.png", _u8(_frame(category, seed, "train", i, size)))
    rng = np.random.default_rng([seed, zlib.crc32(category.encode()), 99])
    for i in range(args.n_test):
        _save(
            folder / "test/good" / f"{i:03d}.png", _u8(_frame(category, seed, "test_good", i, size))
        )
        kind = KINDS[i % len(KINDS)]
        base = _frame(category, seed, "test_good", 1000 + i, size)  # a good view, not "test_bad"
        image, mask = _with_defect(base, kind, args.patch, rng)
        _save(folder / "test" / kind / f"{i:03d}.png", _u8(image))
        _save(folder / "ground_truth" / kind / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)
    (folder / "done").write_text("")
    return folder


def _u8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def run_line(
    folder: Path, name: str, tiling: Tiling | None, input_size: int, args: argparse.Namespace,
    teacher: Any,
) -> dict[str, Any]:  # fmt: skip
    category = read_mvtec_category(folder)
    tcfg = TrainConfig(
        steps=args.steps, batch_size=16, seed=args.seed, device="cpu", precision="fp32"
    )
    started = time.perf_counter()
    result = fit(
        category.train,
        ModelConfig(backbone=teacher.name, input_size=input_size),
        tcfg,
        teacher,
        tiling=tiling,
    )
    fit_s = time.perf_counter() - started
    report = evaluate(result.model, teacher, category, batch_size=16, precision="fp32")
    n = len(report.records)
    mask_side = report.maps.shape[1:] if report.maps is not None else None
    return {
        "category": folder.name.split("-")[0],
        "line": name,
        "tile": f"{tiling.size},{tiling.overlap}" if tiling else "",
        "input_size": input_size,
        "inputs_per_frame": _inputs_per_frame(folder, tiling, input_size),
        "n_train_inputs": result.report["n_train_inputs"],
        "steps": args.steps,
        "image_auroc": report.metrics["image_auroc"],
        "pixel_auroc": report.metrics["pixel_auroc"],
        "aupro": report.metrics["aupro"],
        "flagged_bad": report.at_threshold.get("flagged_bad"),
        "false_alarms": report.at_threshold.get("false_alarms"),
        "fit_s": fit_s,
        "score_ms_per_frame": 1000 * report.seconds / n,
        "frames": n,
        "mask": mask_side,
    }


def timing(folder: Path, args: argparse.Namespace, teacher: Any) -> list[dict[str, Any]]:
    """Median ms per frame (decode from PNG bytes to score and map), tiled vs untiled,
    interleaved frame by frame; untrained students, since weights do not change the work."""
    from memkd.line_model import LineModel
    from memkd.network import MemKDStudent
    from memkd.preprocess import load_image, preprocess
    from memkd.tiling import score_frame

    tiling = Tiling(args.tile, args.overlap)
    models = {}
    for name, size, line_tiling in (
        ("untiled", args.whole_size, None),
        ("tiled", args.tile, tiling),
    ):
        cfg = ModelConfig(backbone=LITE0, input_size=size)
        student = MemKDStudent(cfg, teacher.channels, teacher.spec.signed_features)
        model = LineModel(cfg, student, teacher.describe(), tiling=line_tiling).to("cpu")
        models[name] = model
    frames = [p.read_bytes() for p in sorted((folder / "test").rglob("*.png"))]
    times: dict[str, list[float]] = {"untiled": [], "tiled": []}
    for _ in range(args.reps):
        for data in frames:
            for name, model in models.items():
                started = time.perf_counter()
                img = load_image(data)
                if model.tiling is None:
                    x = preprocess(img, model.input_size, model.mean, model.std)
                    model.score(teacher, x[None], "fp32").maps.numpy()
                else:
                    score_frame(model, teacher, img, "fp32", chunk=16)
                times[name].append(time.perf_counter() - started)
    ms = {k: 1000 * float(np.median(v)) for k, v in times.items()}
    category = folder.name.split("-")[0]
    return [
        {"category": category, "line": "untiled", "input_size": args.whole_size,
         "inputs_per_frame": 1, "score_ms_per_frame": ms["untiled"]},
        {"category": category, "line": "tiled", "tile": f"{tiling.size},{tiling.overlap}",
         "input_size": args.tile, "inputs_per_frame": _inputs_per_frame(folder, tiling, args.tile),
         "score_ms_per_frame": ms["tiled"]},
        {"category": category, "line": "tiled/untiled",
         "score_ms_per_frame": ms["tiled"] / ms["untiled"]},
    ]  # fmt: skip


def _inputs_per_frame(folder: Path, tiling: Tiling | None, input_size: int) -> int:
    if tiling is None:
        return 1
    from memkd.tiling import tile_grid

    with Image.open(next((folder / "train/good").glob("*.png"))) as img:
        return len(tile_grid(img.width, img.height, tiling, input_size))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", default="grass")
    parser.add_argument("--frame", type=int, default=768, help="frame side in pixels")
    parser.add_argument("--patch", type=int, default=96, help="defect patch side in pixels")
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--overlap", type=int, default=0)
    parser.add_argument("--whole-size", type=int, default=256, help="untiled model input")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--n-train", type=int, default=12, help="good training frames")
    parser.add_argument("--n-test", type=int, default=15, help="good and defective test frames")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=RESULTS / "tiling-data")
    parser.add_argument("--quick", action="store_true", help="smoke run: 384 px, 20 steps")
    parser.add_argument("--timing", action="store_true", help="only the cost per frame")
    parser.add_argument("--reps", type=int, default=3, help="--timing: rounds over the frames")
    args = parser.parse_args()
    if args.quick:
        args.frame, args.steps, args.n_train, args.n_test = 384, 20, 6, 5
    torch.set_num_threads(args.threads)
    teacher = load_teacher("tf_efficientnet_lite0", device="cpu")
    rows: list[dict[str, Any]] = []
    for category in args.categories.split(","):
        folder = make_category(args.data, category, args)
        if args.timing:
            rows += timing(folder, args, teacher)
            _print(rows)
            continue
        untiled = run_line(folder, "untiled", None, args.whole_size, args, teacher)
        tiling = Tiling(args.tile, args.overlap)
        tiled = run_line(folder, "tiled", tiling, args.tile, args, teacher)
        ratio = {
            "category": untiled["category"], "line": "tiled/untiled",
            **{k: _ratio(tiled[k], untiled[k]) for k in
               ("image_auroc", "pixel_auroc", "aupro", "fit_s", "score_ms_per_frame")},
        }  # fmt: skip
        rows += [untiled, tiled, ratio]
        _print(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("tiling-timing.csv" if args.timing else "tiling.csv")
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nrows: {out}")


def _ratio(a: Any, b: Any) -> float | None:
    return float(a) / float(b) if isinstance(a, int | float) and b else None


def _print(rows: list[dict[str, Any]]) -> None:
    cols = ("category", "line", "tile", "input_size", "inputs_per_frame", "image_auroc",
            "pixel_auroc", "aupro", "flagged_bad", "false_alarms", "fit_s",
            "score_ms_per_frame")  # fmt: skip
    print("\n| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(_cell(row.get(c)) for c in cols) + " |")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()

"""Arm 9 (model/README.md): how the three scales' anomaly maps are combined, post hoc.

Reads the models ``bench/accuracy.py --save-models`` kept (``<tag>/<key>.safetensors``), scores
each category's nine held-out good images and its validation set once per scale, and compares
combinations fixed from the held-out images only (what a fit has): the default sum, each scale
standardised by its held-out pixels' mean and standard deviation, and other blur widths. Prints
validation image AUROC (top 1 %) per category and the mean; writes ``<first tag>_fusion.csv``.
Figures, not a test.

    .venv/bin/python bench/map_fusion.py --tag fusion256a,fusion256b
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import (
    RESULTS,
    TRAIN_SEED,
    VAL_BAD,
    VAL_GOOD,
    VAL_SEED,
    _data,
)
from memkd.anomaly import BLUR_SIGMA, gaussian_blur, image_scores
from memkd.backbones import load_teacher
from memkd.config import TrainConfig
from memkd.line_model import LineModel
from memkd.metrics import image_auroc
from memkd.train import holdout_split, load_batch

TOPK = 0.01


def scale_maps(model: LineModel, teacher: object, paths: Sequence[Path]) -> torch.Tensor:
    """Unblurred 1 - cos maps [N, 3, H, W], one channel per scale, upsampled to the input."""
    out = []
    for i in range(0, len(paths), 32):
        x = load_batch(paths[i : i + 32], model.input_size, model.mean, model.std, model.roi)
        feats = model.teacher_features(teacher, x, "fp32")  # type: ignore[arg-type]
        model.student.eval()
        with torch.inference_mode():
            s_feats = model.student(feats.maps)
            per_scale = []
            for t, s in zip(feats.maps, s_feats, strict=True):
                d = 1.0 - F.cosine_similarity(t.float(), s.float(), dim=1).unsqueeze(1)
                per_scale.append(F.interpolate(d, size=feats.size, mode="bilinear",
                                               align_corners=True))  # fmt: skip
            out.append(torch.cat(per_scale, dim=1).cpu())
    return torch.cat(out)


def _blurred_scores(maps: torch.Tensor, sigma: float) -> np.ndarray:
    kernel = 2 * round(4 * sigma) + 1
    return image_scores(gaussian_blur(maps, sigma, kernel), TOPK).numpy()


Combination = Callable[[torch.Tensor, torch.Tensor], np.ndarray]


def _zscore(hold: torch.Tensor, maps: torch.Tensor) -> np.ndarray:
    mean = hold.mean(dim=(0, 2, 3), keepdim=True)
    std = hold.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return _blurred_scores(((maps - mean) / std).sum(dim=1, keepdim=True), BLUR_SIGMA)


COMBINATIONS: dict[str, Combination] = {
    "sum": lambda hold, maps: _blurred_scores(maps.sum(dim=1, keepdim=True), BLUR_SIGMA),
    "zscore": _zscore,
    "sigma2": lambda hold, maps: _blurred_scores(maps.sum(dim=1, keepdim=True), 2.0),
    "sigma8": lambda hold, maps: _blurred_scores(maps.sum(dim=1, keepdim=True), 8.0),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", required=True, help="comma-separated accuracy.py tags")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--data", type=Path, default=None, help="default: RESULTS/accuracy-data")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data_root = args.data or args.results / "accuracy-data"
    tags = args.tag.split(",")
    rows: list[dict[str, object]] = []
    teachers: dict[str, object] = {}
    for tag in tags:
        for path in sorted((args.results / tag).glob("*.safetensors")):
            arm, variant, category, seed, _size = path.stem.split("_")
            model = LineModel.load(path)
            backbone = model.config.backbone
            teacher = teachers.setdefault(backbone, load_teacher(backbone, device="cpu"))
            train = _data(data_root, category, TRAIN_SEED, 60, 12, 24)
            _, hold_idx = holdout_split(len(train.train), TrainConfig(seed=int(seed)))
            hold = scale_maps(model, teacher, [train.train[i] for i in hold_idx])
            val = _data(data_root, category, VAL_SEED, 1, VAL_GOOD, VAL_BAD)
            labels = np.array([t.label for t in val.test])
            maps = scale_maps(model, teacher, [t.path for t in val.test])
            row: dict[str, object] = {
                "arm": arm, "variant": variant, "category": category, "seed": int(seed)
            }  # fmt: skip
            for name, combine in COMBINATIONS.items():
                row[name] = round(100 * image_auroc(labels, combine(hold, maps)), 2)
            print(row, flush=True)
            rows.append(row)
    if not rows:
        parser.error(f"no saved models under {', '.join(tags)} (accuracy.py --save-models)")
    with open(args.results / f"{tags[0]}_fusion.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    names = list(COMBINATIONS)
    print("| category | variant | seed | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 3) + "|")
    for row in rows:
        head = f"| {row['category']} | {row['variant']} | {row['seed']} | "
        print(head + " | ".join(f"{row[n]:.2f}" for n in names) + " |")
    means = {n: float(np.mean([float(str(r[n])) for r in rows])) for n in names}
    print("| **mean** | | | " + " | ".join(f"**{means[n]:.2f}**" for n in names) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

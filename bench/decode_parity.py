"""Reduced (JPEG draft) decode vs full decode: do a line's scores and verdicts stay the same?

Figures, not a test (the unit test
``test_preprocess.py::test_reduced_decode_scores_like_full_decode`` pins the rule on one tiny
model). Per generated category, a line fitted on bench/accuracy.py's
training images (data seed 0, 60 images) scores 120 unseen ones (data seed 1, 40 good + 80
defective, the parity tests' count: with 36, one swapped pair already moves AUROC by 0.0035,
one flipped verdict by 2.8 %); every test image is upscaled into the region
of interest of a 2448x2048 (5 MP) frame and saved as the JPEG (quality 90) of a camera mounted
sideways (EXIF orientation 6). A lite0 line is fitted on the generated training images (as
bench/precision.py fits it: 128 px, 60 steps, seed 0), then its test frames are scored, with the
frame's region of interest, after a full decode and after ``memkd.preprocess.load_for_model``'s
reduced one. The parity rule
(MEMKD.md §6): image AUROC within 0.005, >= 99 % identical verdicts at the line's threshold.
``--margins 1,2`` compares decoding just the model's pixels (margin 1: 1/8 here) with the
default, at least twice them (``memkd.preprocess.DRAFT_MARGIN``, 1/4 here; Pillow's
``thumbnail`` keeps the same ``reducing_gap=2``).
Rows go to bench/results/decode_parity.csv and .md.

    .venv/bin/python bench/decode_parity.py            # 4 categories, 128 px, 60 steps (~10 min)
    .venv/bin/python bench/decode_parity.py --quick    # grass and brick, 20 steps (~3 min)
"""

from __future__ import annotations

import argparse
import csv
import io
import time
from pathlib import Path

import numpy as np
import torch
from memkd.anomaly import image_scores
from memkd.backbones import load_teacher
from memkd.config import ModelConfig, TrainConfig
from memkd.datasets import SYNTH_CATEGORIES, read_mvtec_category, synth_dataset
from memkd.metrics import image_auroc
from memkd.preprocess import load_for_model, preprocess
from memkd.train import fit
from PIL import Image

RESULTS = Path(__file__).resolve().parent / "results"
FRAME = (2448, 2048)
ROI = (400, 200, 1700, 1700)
FIELDS = [
    "category", "margin", "input_size", "steps", "n_images", "reduction", "image_auroc_full",
    "image_auroc_reduced", "auroc_diff", "verdict_agreement", "n_flagged_full",
    "map_correlation", "score_rel_diff_mean", "score_rel_diff_max", "flips_within_pct_of_threshold",
    "decode_ms_full", "decode_ms_reduced", "score_topk", "auroc_diff_max", "auroc_diff_top1",
    "torch",
]  # fmt: skip


def camera_frame(path: Path, orientation: int = 6) -> bytes:
    """The image upscaled into ``ROI`` of a 5 MP frame, as a sideways camera's JPEG."""
    frame = Image.new("RGB", FRAME, (96, 110, 84))
    frame.paste(Image.open(path).convert("RGB").resize(ROI[2:], Image.Resampling.BILINEAR), ROI[:2])
    raw = frame.transpose(Image.Transpose.ROTATE_90)  # EXIF 6 rotates it back for display
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    raw.save(buf, format="JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def _batch(
    frames: list[bytes], size: int, mean, std, reduce: bool, margin: int = 1
) -> tuple[torch.Tensor, float]:
    started = time.perf_counter()
    tensors = [
        preprocess(load_for_model(f, size, ROI, reduce=reduce, margin=margin), size, mean, std, ROI)
        for f in frames
    ]
    return torch.stack(tensors), (time.perf_counter() - started) / len(frames) * 1000


def category_rows(
    data: Path, name: str, size: int, steps: int, teacher, margins: list[int]
) -> list[dict[str, object]]:
    if not (data / name).exists():
        synth_dataset(data, [name], seed=0, n_train=60)
    category = read_mvtec_category(data / name)
    mcfg = ModelConfig(backbone=teacher.name, input_size=size)
    model = fit(category.train, mcfg, TrainConfig(steps=steps, seed=0), teacher).model
    unseen = data / "unseen-seed1"
    if not (unseen / name).exists():
        synth_dataset(unseen, [name], seed=1, n_train=1, n_test_good=40, n_test_bad=80)
    test = read_mvtec_category(unseen / name).test
    frames = [camera_frame(item.path) for item in test]
    labels = [item.label for item in test]
    x_full, ms_full = _batch(frames, size, model.mean, model.std, reduce=False)
    full = model.score(teacher, x_full)
    rows = []
    for margin in margins:
        x_red, ms_red = _batch(frames, size, model.mean, model.std, reduce=True, margin=margin)
        rows.append(_compare(model, full, model.score(teacher, x_red), labels, ms_full, ms_red))
        reduction = load_for_model(frames[0], size, ROI, margin=margin).reduction
        rows[-1].update(category=name, margin=margin, input_size=size, steps=steps,
                        reduction=reduction)  # fmt: skip
    return rows


def _compare(model, full, red, labels, ms_full: float, ms_red: float) -> dict[str, object]:
    t = model.threshold
    flagged_full, flagged_red = full.scores >= t, red.scores >= t
    flips = (flagged_full != flagged_red).nonzero().flatten().tolist()
    rel = ((red.scores - full.scores) / full.scores).abs()
    auroc_full = image_auroc(labels, full.scores.numpy())
    auroc_red = image_auroc(labels, red.scores.numpy())
    maps_full, maps_red = full.maps.flatten().double().numpy(), red.maps.flatten().double().numpy()
    # Both image scores from the same maps, side by side, whichever the line uses.
    by_score = {
        name: round(
            image_auroc(labels, image_scores(red.maps, k).numpy())
            - image_auroc(labels, image_scores(full.maps, k).numpy()),
            4,
        )
        for name, k in (("max", 0.0), ("top1", 0.01))
    }
    return {
        "n_images": len(labels),
        "image_auroc_full": round(auroc_full, 4), "image_auroc_reduced": round(auroc_red, 4),
        "auroc_diff": round(auroc_red - auroc_full, 4),
        "verdict_agreement": round(float((flagged_full == flagged_red).float().mean()), 4),
        "n_flagged_full": int(flagged_full.sum()),
        "map_correlation": round(float(np.corrcoef(maps_full, maps_red)[0, 1]), 5),
        "score_rel_diff_mean": round(float(rel.mean()), 5),
        "score_rel_diff_max": round(float(rel.max()), 5),
        "flips_within_pct_of_threshold": ",".join(
            f"{100 * abs(float(full.scores[i]) / t - 1):.2f}" for i in flips
        ),
        "decode_ms_full": round(ms_full, 1), "decode_ms_reduced": round(ms_red, 1),
        "score_topk": model.config.score_topk, "auroc_diff_max": by_score["max"],
        "auroc_diff_top1": by_score["top1"], "torch": torch.__version__,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="grass and brick, 20 steps")
    parser.add_argument("--categories", default=",".join(SYNTH_CATEGORIES))
    parser.add_argument("--size", type=int, default=128, help="model input side")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--data", type=Path, default=RESULTS / "synth-data")
    parser.add_argument("--margins", default="1,2", help="decoded pixels / model pixels")
    parser.add_argument("--tag", default="decode_parity")
    args = parser.parse_args(argv)
    if args.quick:
        args.categories, args.steps = "grass,brick", 20
    teacher = load_teacher("tf_efficientnet_lite0")
    rows = []
    for name in args.categories.split(","):
        factors = [int(f) for f in args.margins.split(",")]
        rows += category_rows(args.data, name, args.size, args.steps, teacher, factors)
        print(rows[-len(factors) :], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / f"{args.tag}.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    cols = ["category", "margin", "reduction", "image_auroc_full", "auroc_diff",
            "verdict_agreement", "n_flagged_full", "map_correlation", "score_rel_diff_mean",
            "decode_ms_full", "decode_ms_reduced", "auroc_diff_max", "auroc_diff_top1"]  # fmt: skip
    table = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    table += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    (RESULTS / f"{args.tag}.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Metrics against scikit-learn, a brute-force PRO reference and hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from memkd.metrics import aupro, image_auroc, pixel_auroc, pro_curve
from scipy import ndimage
from sklearn.metrics import roc_auc_score


def _brute_force_aupro(masks: np.ndarray, maps: np.ndarray, limit: float) -> float:
    """Loop over every distinct threshold, region by region: slow and obviously right."""
    normal = ~masks.astype(bool)
    fprs, pros = [0.0], [0.0]
    for thr in np.unique(maps)[::-1]:
        above = maps >= thr
        overlaps = []
        for mask, amap in zip(masks, maps, strict=True):
            labelled, n = ndimage.label(mask, structure=np.ones((3, 3)))
            overlaps += [(amap[labelled == i] >= thr).mean() for i in range(1, n + 1)]
        fprs.append(above[normal].mean())
        pros.append(float(np.mean(overlaps)))
    fpr, pro = np.array(fprs), np.array(pros)
    y_at = np.interp(limit, fpr, pro)
    keep = fpr <= limit
    xs = np.append(fpr[keep], limit)
    ys = np.append(pro[keep], y_at)
    return float(np.trapezoid(ys, xs) / limit)


def test_image_auroc_equals_sklearn() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = rng.normal(size=200) + labels
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))


def test_pixel_auroc_equals_sklearn_over_all_pixels() -> None:
    rng = np.random.default_rng(1)
    masks = rng.random((5, 16, 16)) > 0.9
    maps = (rng.random((5, 16, 16)) + masks * 0.5).astype(np.float32)
    want = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(want)
    # Same answer for N x 1 x H x W, 0/255 masks and lists of images.
    assert pixel_auroc((masks * 255).astype(np.uint8)[:, None], maps[:, None]) == pytest.approx(
        want
    )
    assert pixel_auroc(list(masks), list(maps)) == pytest.approx(want)
    # Ties between normal and anomalous pixels count half, as in scikit-learn.
    tied = np.round(maps, 1)
    assert pixel_auroc(masks, tied) == pytest.approx(roc_auc_score(masks.ravel(), tied.ravel()))
    assert pixel_auroc(masks, tied.astype(np.float16)) == pytest.approx(
        roc_auc_score(masks.ravel(), tied.astype(np.float16).ravel())
    )


def test_aupro_of_a_perfect_map_is_one() -> None:
    masks = np.zeros((3, 20, 20), dtype=bool)
    masks[0, 2:6, 2:9] = True
    masks[1, 10:12, 3:4] = True
    maps = masks.astype(np.float32)
    assert aupro(masks, maps) == pytest.approx(1.0)
    assert aupro(masks, 1 - maps) == pytest.approx(0.0)


def test_aupro_hand_computed_case_averages_regions_not_pixels() -> None:
    # Region A: 1 pixel at 0.9; region B: 3 pixels at 0.5; 10 normal pixels: one at 0.7, nine at
    # 0.1. Curve: (0,0) (0,.5) (.1,.5) (.1,1) (1,1); area to 0.3 = .1*.5 + .2*1 = .25 -> 5/6.
    # (A pixel-level TPR would give 0.75 instead.)
    maps = np.array([[0.9, 0.1, 0.5, 0.5, 0.5, 0.1, 0.7, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]])
    masks = np.array([[1, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    assert aupro(masks, maps) == pytest.approx(5 / 6)
    fpr, pro = pro_curve(masks, maps)
    np.testing.assert_allclose(fpr, [0, 0, 0.1, 0.1, 1.0])
    np.testing.assert_allclose(pro, [0, 0.5, 0.5, 1.0, 1.0])


def test_aupro_interpolates_at_the_limit() -> None:
    # Normal pixels: 0.8 (one of two) -> FPR jumps 0 -> 0.5 while PRO stays 0, then the region at
    # 0.6 takes PRO to 1 at FPR 0.5. At FPR 0.3 the curve is at PRO 0 -> area 0.
    maps = np.array([[0.8, 0.6, 0.1]])
    masks = np.array([[0, 1, 0]])
    assert aupro(masks, maps) == pytest.approx(0.0)
    # Limit 1: (0,0) (.5,0) (.5,1) (1,1) -> 0.5.
    assert aupro(masks, maps, fpr_limit=1.0) == pytest.approx(0.5)


def test_regions_are_eight_connected_and_never_span_images() -> None:
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # diagonal neighbours: one region of 2 pixels
    masks[1, 0, 0] = True  # same place in the next image: its own region
    maps = np.zeros((2, 4, 4), dtype=np.float32)
    maps[0, 0, 0] = 1.0  # half of region 1 found first
    maps[1, 0, 0] = 0.5
    _, pro = pro_curve(masks, maps)
    np.testing.assert_allclose(pro[:3], [0, 0.25, 0.75])


def test_aupro_matches_a_brute_force_reference() -> None:
    rng = np.random.default_rng(3)
    masks = np.zeros((4, 12, 12), dtype=bool)
    masks[0, 2:5, 3:7] = True
    masks[0, 8:11, 8:9] = True
    masks[2, 5:9, 1:4] = True
    maps = np.round(rng.random((4, 12, 12)) + masks * 0.6, 2).astype(np.float32)  # with ties
    for limit in (0.05, 0.3, 1.0):
        assert aupro(masks, maps, limit) == pytest.approx(
            _brute_force_aupro(masks, maps, limit), abs=1e-9
        )


def test_undefined_metrics_are_nan() -> None:
    maps = np.random.default_rng(0).random((2, 8, 8))
    no_defect = np.zeros((2, 8, 8), dtype=bool)
    assert math.isnan(aupro(no_defect, maps))
    assert math.isnan(pixel_auroc(no_defect, maps))
    assert math.isnan(aupro(np.ones((2, 8, 8)), maps))
    assert math.isnan(image_auroc([0, 0, 0], [0.1, 0.2, 0.3]))


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        aupro(np.zeros((2, 8, 8)), np.zeros((2, 8, 9)))
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(np.zeros((2, 8, 8)), np.zeros((2, 8, 8)), fpr_limit=0)

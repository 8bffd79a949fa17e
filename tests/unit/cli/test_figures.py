"""PNG figures of eval (PIL only) and which images get a heatmap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from memkd_stream.cli.eval import _sample
from memkd_stream.cli.figures import heat_colours, overlay_panel, roc_png
from memkd_stream.cli.lines import record_summary
from memkd_stream.cli.scoring import Scored


def test_roc_png_is_a_readable_image(tmp_path):
    path = tmp_path / "roc.png"
    roc_png(path, np.array([0, 0.1, 1.0]), np.array([0, 0.8, 1.0]), "image-level ROC", 0.91)
    with Image.open(path) as img:
        assert img.size == (480, 480) and img.mode == "RGB"
        # the curve colour is drawn somewhere
        assert (np.asarray(img) == (31, 119, 180)).all(axis=-1).any()


def test_heat_colours_run_from_blue_to_red():
    ramp = heat_colours(np.array([[0.0, 0.5, 1.0, 7.0]]))
    assert ramp.shape == (1, 4, 3) and ramp.dtype == np.uint8
    low, mid, high, clipped = ramp[0]
    assert low[2] > low[0] and high[0] > high[2]
    assert mid[1] == 255
    assert (clipped == high).all()


def test_overlay_panel_enlarges_small_maps_and_adds_the_mask():
    image = Image.new("RGB", (64, 64), (120, 120, 120))
    amap = np.zeros((64, 64), np.float32)
    amap[10:20, 10:20] = 3.0
    mask = amap > 0
    panel = overlay_panel(image, amap, 1.0, ["a.png", "score 3"], mask=mask)
    assert panel.size == (3 * 256 + 8, 256 + 34)
    no_mask = overlay_panel(image, amap, 1.0, ["a.png"])
    assert no_mask.size == (2 * 256 + 4, 256 + 20)
    # the threshold contour is white on the heatmap tile
    tile = np.asarray(panel)[34:, 260 : 260 + 256]
    assert (tile == 255).all(axis=-1).any()


def test_sample_mixes_spread_defects_and_the_worst_good_images():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    scores = np.array([0.1, 0.9, 0.3, 0.8, 1, 2, 3, 4, 5, 6], dtype=float)
    scored = Scored(
        [Path(f"{i}.png") for i in range(10)],
        scores,
        np.zeros((10, 4, 4), np.float32),
        labels=labels,
        defects=["good"] * 4 + ["a"] * 3 + ["b"] * 3,
    )
    picks = _sample(scored, 4)
    assert picks == [4, 9, 1, 3]  # first and last defect, then good images by score
    assert _sample(scored, 0) == []
    unlabelled = Scored(scored.paths, scores, scored.maps)
    assert _sample(unlabelled, 3) == [9, 8, 7]


def test_record_summary_reads_what_operators_compare():
    record = {
        "model": {"backbone": "tf_efficientnet_lite0", "memory": True},
        "input_size": 256,
        "roi": [0, 0, 10, 10],
        "calibration": {"threshold": 0.61},
        "provenance": {"n_train": 50, "steps": 300, "seed": 1, "metrics": {"image_auroc": 0.99}},
    }
    summary = record_summary(record)
    assert summary["backbone"] == "tf_efficientnet_lite0"
    assert summary["threshold"] == 0.61
    assert summary["metrics"] == {"image_auroc": 0.99}
    assert record_summary({})["threshold"] is None

"""evaluate(): mask alignment (ROI, resize), batching, metrics, report formats, a real model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from memkd.anomaly import AnomalyResult, image_scores
from memkd.backbones import Teacher
from memkd.config import ModelConfig, TrainConfig
from memkd.datasets import DatasetError, read_mvtec_category, synth_dataset
from memkd.evaluate import evaluate, format_report_table
from memkd.train import fit
from PIL import Image

from tests.support.models import LITE0


class BrightnessModel:
    """A stand-in line model whose map is the image brightness: perfect on bright defects."""

    def __init__(self, roi: tuple[int, int, int, int] | None = None, size: int = 32) -> None:
        self.input_size, self.roi = size, roi
        self.tiling = None
        self.mean, self.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        self.calibration = SimpleNamespace(threshold=0.5)
        self.batches: list[int] = []

    def to(self, device: str | torch.device) -> BrightnessModel:
        return self

    def score(self, teacher: object, batch: torch.Tensor, precision: str = "auto") -> AnomalyResult:
        self.batches.append(batch.shape[0])
        maps = batch.mean(dim=1, keepdim=True)
        return AnomalyResult(maps=maps, scores=maps.amax(dim=(1, 2, 3)))


def _category(root: Path, n_good: int = 3, n_bad: int = 4) -> Path:
    """64x64 dark images; defects are white rectangles inside the box (16, 16)-(48, 48)."""
    rng = np.random.default_rng(0)
    for split, count in (("train/good", 2), ("test/good", n_good)):
        for i in range(count):
            _save(root / split / f"{i:03d}.png", rng.integers(0, 40, (64, 64, 3)))
    for i in range(n_bad):
        image = rng.integers(0, 40, (64, 64, 3))
        mask = np.zeros((64, 64), dtype=np.uint8)
        y, x = 16 + 2 * int(rng.integers(0, 8)), 16 + 2 * int(rng.integers(0, 8))
        mask[y : y + 8, x : x + 6] = 255
        image[mask > 0] = 250
        _save(root / "test" / "spot" / f"{i:03d}.png", image)
        _save(root / "ground_truth" / "spot" / f"{i:03d}_mask.png", mask)
    return root


def _save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


@pytest.mark.parametrize("roi", [None, (16, 16, 32, 32)])
def test_masks_line_up_with_maps_with_and_without_roi(tmp_path: Path, roi: tuple | None) -> None:
    category = read_mvtec_category(_category(tmp_path / "plate"))
    report = evaluate(BrightnessModel(roi), None, category, keep_maps=True)  # type: ignore[arg-type]
    assert report.metrics == pytest.approx({"image_auroc": 1.0, "pixel_auroc": 1.0, "aupro": 1.0})
    assert (report.n_good, report.n_bad) == (3, 4)
    assert report.maps is not None and report.maps.shape == (7, 32, 32)
    assert report.at_threshold == {"flagged_bad": 1.0, "false_alarms": 0.0}
    assert report.per_defect == {"spot": {"n": 4.0, "image_auroc": 1.0}}


def test_a_misplaced_roi_is_visible_in_the_pixel_metrics(tmp_path: Path) -> None:
    # The same crop for image and mask keeps the metric perfect (above); here a model whose crop
    # box differs from the one evaluate applies to the masks would mislabel pixels.
    category = read_mvtec_category(_category(tmp_path / "plate"))

    class Shifted(BrightnessModel):
        def score(
            self, teacher: object, batch: torch.Tensor, precision: str = "auto"
        ) -> AnomalyResult:
            result = super().score(teacher, batch, precision)
            maps = torch.roll(result.maps, shifts=(6, 6), dims=(2, 3))
            return AnomalyResult(maps=maps, scores=result.scores)

    report = evaluate(Shifted(), None, category)  # type: ignore[arg-type]
    assert report.metrics["image_auroc"] == 1.0
    assert report.metrics["aupro"] < 0.8


def test_batching_does_not_change_results(tmp_path: Path) -> None:
    category = read_mvtec_category(_category(tmp_path / "plate", n_good=4, n_bad=3))
    model = BrightnessModel()
    small = evaluate(model, None, category, batch_size=3)  # type: ignore[arg-type]
    assert model.batches == [3, 3, 1]
    large = evaluate(BrightnessModel(), None, category, batch_size=16)  # type: ignore[arg-type]
    assert small.records == large.records and small.metrics == large.metrics
    assert small.maps is None


def test_report_json_and_table(tmp_path: Path) -> None:
    plate = read_mvtec_category(_category(tmp_path / "plate"))
    only_good = read_mvtec_category(_category(tmp_path / "blank", n_bad=0))
    reports = [evaluate(BrightnessModel(), None, c) for c in (plate, only_good)]  # type: ignore[arg-type]
    data = json.loads(json.dumps(reports[1].to_dict(), allow_nan=False))
    assert data["metrics"] == {"image_auroc": None, "pixel_auroc": None, "aupro": None}
    assert data["n_bad"] == 0 and len(data["images"]) == 3
    first = json.loads(json.dumps(reports[0].to_dict(), allow_nan=False))
    assert first["images"][0].keys() == {"path", "defect", "label", "score", "flagged"}
    assert "images" not in reports[0].to_dict(with_images=False)
    table = format_report_table(reports)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["category", "good", "bad"]
    assert lines[2].split()[:6] == ["plate", "3", "4", "100.0", "100.0", "100.0"]
    assert lines[3].split()[:6] == ["blank", "3", "0", "-", "-", "-"]
    assert lines[4].split()[:4] == ["mean", "100.0", "100.0", "100.0"]
    assert len({len(line) for line in lines}) <= 2  # aligned columns


def test_a_category_without_test_images_is_refused(tmp_path: Path) -> None:
    _save(tmp_path / "empty" / "train" / "good" / "000.png", np.zeros((8, 8, 3)))
    with pytest.raises(DatasetError, match="no test images"):
        evaluate(BrightnessModel(), None, read_mvtec_category(tmp_path / "empty"))  # type: ignore[arg-type]


def test_evaluate_a_real_line_model(tmp_path: Path, lite0: Teacher) -> None:
    (root,) = synth_dataset(
        tmp_path, categories=("grass",), n_train=8, n_test_good=3, n_test_bad=6, size=64
    )
    category = read_mvtec_category(root)
    model = fit(
        category.train,
        ModelConfig(backbone=LITE0, input_size=64),
        TrainConfig(steps=2, batch_size=4, exemplars=2),
        teacher=lite0,
    ).model
    report = evaluate(model, lite0, category, batch_size=4, keep_maps=True)
    assert (report.n_good, report.n_bad, len(report.records)) == (3, 6, 9)
    assert report.maps is not None and report.maps.shape == (9, 64, 64)
    for name in ("image_auroc", "pixel_auroc", "aupro"):
        assert 0.0 <= report.metrics[name] <= 1.0 and not math.isnan(report.metrics[name])
    top = image_scores(torch.from_numpy(report.maps)[:, None], model.config.score_topk)
    np.testing.assert_allclose(report.scores, top.numpy(), rtol=1e-5)
    assert set(report.per_defect) == set(category.defects)
    assert report.to_dict(with_images=False)["threshold"] == pytest.approx(
        model.calibration.threshold
    )


def test_a_tiled_line_is_evaluated_per_frame_on_the_stitched_map(tmp_path: Path) -> None:
    from memkd.tiling import Tiling

    category = read_mvtec_category(_category(tmp_path / "plate"))
    model = BrightnessModel(size=32)
    model.tiling = Tiling(32, 8)  # type: ignore[assignment]  # 64 px: tiles at 0, 24, 32
    report = evaluate(model, None, category, batch_size=4, keep_maps=True)  # type: ignore[arg-type]
    assert report.metrics == pytest.approx({"image_auroc": 1.0, "pixel_auroc": 1.0, "aupro": 1.0})
    assert report.maps is not None and report.maps.shape == (
        7,
        64,
        64,
    )  # the frame at the tile scale
    assert set(model.batches) == {4, 1}  # 9 tiles per frame, forwarded 4 at a time
    np.testing.assert_allclose(report.scores, report.maps.max(axis=(1, 2)), rtol=1e-6)

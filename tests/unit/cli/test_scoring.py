"""Scoring files like the worker does: a tiled line is scored per frame, map stitched."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from memkd.anomaly import AnomalyResult
from memkd.tiling import Tiling
from PIL import Image

from memkd_stream.cli.scoring import map_size, model_view, score_paths


class Brightness:
    """A stand-in line model whose map is the input's brightness."""

    def __init__(self, tiling: Tiling | None) -> None:
        self.input_size, self.roi, self.tiling = 32, (0, 0, 96, 64), tiling
        self.mean, self.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        self.calibration = SimpleNamespace(threshold=0.5)

    def score(self, teacher: object, batch: torch.Tensor, precision: str = "auto") -> AnomalyResult:
        maps = batch.mean(dim=1, keepdim=True)
        return AnomalyResult(maps=maps, scores=maps.amax(dim=(1, 2, 3)))


def test_a_tiled_line_scores_each_frame_as_the_max_over_its_tiles(tmp_path: Path) -> None:
    pixels = np.zeros((64, 128, 3), np.uint8)
    pixels[40:42, 70:72] = 255  # a 2-pixel defect inside the ROI
    Image.fromarray(pixels).save(tmp_path / "frame.png")
    tiled = Brightness(Tiling(32))
    scored = score_paths(tiled, None, [tmp_path / "frame.png"])  # type: ignore[arg-type]
    assert scored.maps.shape == (1, 64, 96) == (1, *map_size(tiled, (128, 64)))  # type: ignore[arg-type]
    assert float(scored.scores[0]) == 1.0 and float(scored.maps[0, 41, 71]) == 1.0
    assert model_view(tmp_path / "frame.png", tiled).size == (96, 64)  # type: ignore[arg-type]
    whole = score_paths(Brightness(None), None, [tmp_path / "frame.png"])  # type: ignore[arg-type]
    assert whole.maps.shape == (1, 32, 32) and float(whole.scores[0]) < 0.5  # resized away

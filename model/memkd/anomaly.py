"""Anomaly maps, image scores, calibration and the rendered mask (model/MEMKD.md §6, DESIGN.md §3).

Map: per scale 1 - cosine along channels between teacher and student, bilinear upsampling
(align_corners=True) to the input size, sum over the three scales, then a Gaussian blur
(sigma 4, kernel 33) done as two 1-D convolutions on the maps' device. Score: max of the blurred
map. Post-processing (threshold, 8-bit mask) is separate and named: ``Calibration``,
``render_mask``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "AnomalyResult",
    "Calibration",
    "anomaly_map",
    "anomaly_result",
    "gaussian_blur",
    "render_mask",
]

BLUR_SIGMA = 4.0
BLUR_KERNEL = 33


@dataclass(frozen=True)
class AnomalyResult:
    """``maps``: blurred anomaly maps [B, 1, H, W] float32; ``scores``: their maxima [B]."""

    maps: torch.Tensor
    scores: torch.Tensor


def _kernel1d(sigma: float, size: int, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


def gaussian_blur(
    maps: torch.Tensor, sigma: float = BLUR_SIGMA, kernel_size: int = BLUR_KERNEL
) -> torch.Tensor:
    """Separable Gaussian blur of [B, 1, H, W] maps (borders mirrored), on their device."""
    k = _kernel1d(sigma, kernel_size, maps.device)
    pad = kernel_size // 2
    mode = "reflect" if min(maps.shape[-2:]) > pad else "replicate"
    x = maps.float()
    x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, pad, pad), mode=mode), k.view(1, 1, -1, 1))


def anomaly_map(
    teacher_feats: Sequence[torch.Tensor],
    student_feats: Sequence[torch.Tensor],
    size: int | tuple[int, int],
) -> torch.Tensor:
    """Unblurred map [B, 1, H, W]: sum over scales of upsampled 1 - cos(teacher, student)."""
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    total = None
    for t, s in zip(teacher_feats, student_feats, strict=True):
        d = 1.0 - F.cosine_similarity(t.float(), s.float(), dim=1).unsqueeze(1)
        d = F.interpolate(d, size=hw, mode="bilinear", align_corners=True)
        total = d if total is None else total + d
    assert total is not None
    return total


def anomaly_result(
    teacher_feats: Sequence[torch.Tensor],
    student_feats: Sequence[torch.Tensor],
    size: int | tuple[int, int],
) -> AnomalyResult:
    """Blurred maps and image scores (max of each blurred map)."""
    maps = gaussian_blur(anomaly_map(teacher_feats, student_feats, size))
    return AnomalyResult(maps=maps, scores=maps.flatten(1).amax(dim=1))


@dataclass(frozen=True)
class Calibration:
    """Score statistics of held-out good images and the threshold chosen from them.

    ``rule`` "mean_std": threshold = mean + k * std; "quantile": threshold = the q-quantile.
    Both statistics are kept whatever the rule, so a line can be re-thresholded without refitting.
    """

    threshold: float
    mean: float
    std: float
    quantile: float
    n: int
    rule: str = "mean_std"
    k: float = 3.0
    q: float = 0.99
    max: float = 0.0

    @classmethod
    def from_scores(
        cls, scores: Sequence[float] | np.ndarray, rule: str = "mean_std", k: float = 3.0,
        q: float = 0.99,
    ) -> Calibration:  # fmt: skip
        arr = np.asarray(scores, dtype=np.float64).ravel()
        if arr.size == 0 or not np.all(np.isfinite(arr)):
            raise ValueError("calibration needs at least one finite score")
        mean = float(arr.mean())
        std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
        quant = float(np.quantile(arr, q))
        if rule == "mean_std":
            threshold = mean + k * std
        elif rule == "quantile":
            threshold = quant
        else:
            raise ValueError(f"unknown threshold rule {rule!r}")
        threshold = max(threshold, float(arr.max()) * 1e-6, 1e-12)
        return cls(threshold, mean, std, quant, int(arr.size), rule, k, q, float(arr.max()))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(**data)


def render_mask(map_hw: torch.Tensor | np.ndarray, threshold: float) -> np.ndarray:
    """8-bit mask of DESIGN.md §3: clip(map / (2 * threshold), 0, 1) * 255, so 128 = threshold."""
    if not threshold > 0 or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a positive finite number, got {threshold}")
    if isinstance(map_hw, torch.Tensor):
        map_hw = map_hw.detach().float().cpu().numpy()
    arr = np.asarray(map_hw, dtype=np.float64)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"render_mask needs one [H, W] map, got shape {arr.shape}")
    scaled = np.clip(arr / (2.0 * threshold), 0.0, 1.0) * 255.0
    return np.floor(scaled + 0.5).astype(np.uint8)

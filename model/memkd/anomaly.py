"""Anomaly maps, image scores, calibration and the rendered mask (model/MEMKD.md §6, DESIGN.md §3).

Map: per scale 1 - cosine along channels between teacher and student, bilinear upsampling
(align_corners=True) to the input size, sum over the three scales, then a Gaussian blur
(sigma 4, kernel 33) done as two 1-D convolutions on the maps' device. Score: the mean of the
blurred map's highest ``topk`` fraction of pixels (the line's ``score_topk``, default 1 %), or
with ``topk`` 0 its maximum. Post-processing (threshold, 8-bit mask) is separate and named:
``Calibration``, ``render_mask``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from memkd.threshold import (
    DEFAULT_RULE,
    DEFAULT_TARGET_FPR,
    TARGET_RULES,
    best_f1_threshold,
    expected_fpr,
    threshold_for,
)

__all__ = [
    "AnomalyResult",
    "Calibration",
    "anomaly_map",
    "anomaly_result",
    "gaussian_blur",
    "image_scores",
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


def image_scores(maps: torch.Tensor, topk: float = 0.0) -> torch.Tensor:
    """Scores [B] of blurred maps [B, 1, H, W]: the maximum, or with ``topk`` > 0 the mean of
    that fraction of each map's highest pixels (at least one pixel)."""
    flat = maps.flatten(1)
    if topk <= 0:
        return flat.amax(dim=1)
    k = max(1, round(topk * flat.shape[1]))
    return flat.topk(k, dim=1).values.mean(dim=1)


def anomaly_result(
    teacher_feats: Sequence[torch.Tensor],
    student_feats: Sequence[torch.Tensor],
    size: int | tuple[int, int],
    topk: float = 0.0,
) -> AnomalyResult:
    """Blurred maps and image scores (``image_scores``: the max, or a top-k mean)."""
    maps = gaussian_blur(anomaly_map(teacher_feats, student_feats, size))
    return AnomalyResult(maps=maps, scores=image_scores(maps, topk))


@dataclass(frozen=True)
class Calibration:
    """Score statistics of held-out good images and the threshold chosen from them.

    ``rule`` (``memkd.threshold``): "lognormal" / "normal" set the prediction bound for
    ``target_fpr``, "lognormal_fit" the fitted log-normal's quantile; "mean_std" uses
    mean + k * std; "quantile" the q-quantile; "manual" a value an operator chose.
    ``expected_fpr`` is the false-alarm rate the good-score model predicts at the threshold.
    The held-out ``scores`` themselves are kept (a few dozen floats), so a line can be moved to
    another target rate later without retraining (``retarget``). ``defects``: what defective
    examples said, when the fit had some (``with_defects``).
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
    target_fpr: float | None = None
    expected_fpr: float | None = None
    scores: tuple[float, ...] = ()
    defects: dict[str, float] | None = None

    @classmethod
    def from_scores(
        cls, scores: Sequence[float] | np.ndarray, rule: str = "mean_std", k: float = 3.0,
        q: float = 0.99, target_fpr: float = DEFAULT_TARGET_FPR,
    ) -> Calibration:  # fmt: skip
        arr = np.asarray(scores, dtype=np.float64).ravel()
        if arr.size == 0 or not np.all(np.isfinite(arr)):
            raise ValueError("calibration needs at least one finite score")
        mean = float(arr.mean())
        std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
        quant = float(np.quantile(arr, q))
        threshold = threshold_for(arr, rule, target_fpr, k=k, q=q)
        threshold = max(threshold, float(arr.max()) * 1e-6, 1e-12)
        return cls(
            threshold, mean, std, quant, int(arr.size), rule, k, q, float(arr.max()),
            target_fpr=target_fpr if rule in TARGET_RULES else None,
            expected_fpr=expected_fpr(arr, threshold, rule),
            scores=tuple(round(float(v), 7) for v in arr),
        )  # fmt: skip

    def retarget(self, target_fpr: float, rule: str | None = None) -> Calibration:
        """The same evidence, another target false-alarm rate (no retraining)."""
        if not self.scores:
            raise ValueError(
                "this calibration does not keep its held-out scores (a line fitted before they "
                "were stored): refit the line, or set the threshold by value"
            )
        new_rule = rule or (self.rule if self.rule in TARGET_RULES else DEFAULT_RULE)
        fresh = Calibration.from_scores(self.scores, new_rule, self.k, self.q, target_fpr)
        return replace(fresh, defects=self.defects)

    def with_more_good(
        self,
        good_scores: Sequence[float] | np.ndarray,
        target_fpr: float | None = None,
        rule: str | None = None,
    ) -> Calibration:
        """More evidence: scores of good images the model never trained on join the stored
        held-out scores, and the rule sets the threshold again (the calibration's target unless
        one is given). A fit holds out a handful of good images, which rarely holds a target
        rate within 2x; fifty more from the running line do at 5 % on nearly every fit measured
        (model/README.md, "Thresholds with more good images").
        What defects said was about the old threshold: ``with_defects`` again."""
        extra = np.asarray(good_scores, dtype=np.float64).ravel()
        if extra.size == 0:
            raise ValueError("no good-image scores to add")
        new_rule = rule or (self.rule if self.rule in TARGET_RULES else DEFAULT_RULE)
        target = target_fpr if target_fpr is not None else (self.target_fpr or DEFAULT_TARGET_FPR)
        evidence = np.concatenate([np.asarray(self.scores, dtype=np.float64), extra])
        return Calibration.from_scores(evidence, new_rule, self.k, self.q, target)

    def with_threshold(self, value: float, rule: str = "manual") -> Calibration:
        """A threshold set another way (by hand, from defects); its expected false-alarm rate
        when the held-out scores are kept. What defects said no longer applies: ``with_defects``
        again."""
        if not value > 0 or not math.isfinite(value):
            raise ValueError(f"a threshold must be a positive finite number, got {value}")
        fpr = expected_fpr(self.scores, value, DEFAULT_RULE) if self.scores else None
        return replace(self, threshold=float(value), rule=rule, target_fpr=None,
                       expected_fpr=fpr, defects=None)  # fmt: skip

    def with_defects(self, bad_scores: Sequence[float] | np.ndarray) -> Calibration:
        """Record what defective examples say: the share this threshold catches, and the
        threshold with the best F1 against the held-out good scores."""
        bad = np.asarray(bad_scores, dtype=np.float64).ravel()
        if bad.size == 0 or not self.scores:
            return self
        cut, f1, recall = best_f1_threshold(self.scores, bad)
        caught = float(np.mean(bad >= self.threshold))
        info = {"n": float(bad.size), "recall": caught, "miss_rate": 1.0 - caught,
                "best_f1_threshold": cut, "best_f1": f1, "best_f1_recall": recall}  # fmt: skip
        return replace(self, defects=info)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["scores"] = list(self.scores)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """Fields this memkd does not know are ignored (a newer fit may add statistics; the
        threshold is always a plain number)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["scores"] = tuple(float(v) for v in values.get("scores") or ())
        return cls(**values)


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

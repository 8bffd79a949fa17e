"""Threshold rules: from a few held-out good scores to a threshold with a stated false-alarm rate.

A line usually holds out a few dozen good images or fewer. Their scores are a small sample of
the good-score distribution, and a threshold that promises a false-alarm rate (FPR) must
account for both the distribution's tail and the uncertainty of estimating it from n scores.

Rules (``RULES``):

- ``lognormal``: image scores (maxima of non-negative maps) are right-skewed; their
  logarithm is modelled as normal, and the threshold is the upper **prediction bound** for one
  new score: ``exp(m + t(1 - fpr, n - 1) * s * sqrt(1 + 1/n))`` with m, s the mean and standard
  deviation of the log scores and t Student's quantile. Averaged over the held-out samples a line
  could have drawn, a new good image exceeds it with probability ``fpr`` exactly (when the model
  holds), which is what "expected false-alarm rate" means here.
- ``lognormal_fit`` (default): the same log-normal model, but the threshold is its fitted
  ``1 - fpr`` quantile, ``exp(m + z(1 - fpr) * s)``, not a bound. The prediction bound's
  promise holds on average over held-out samples, but with the nine or so held-out images a line
  usually has, its typical threshold sits far above the good scores (t with 8 degrees of freedom):
  on the accuracy programme's validation sets it flagged a median ~0 % of good images at a 1 %
  target and caught half the defects the fitted quantile catches (model/README.md, "Accuracy
  programme").
- ``normal``: the prediction bound on the raw scores.
- ``mean_std``: mean + k * std (the first wave's rule; no promised rate, k = 3).
- ``quantile``: the empirical q-quantile (with few scores: their maximum).

``expected_fpr`` inverts a rule: the false-alarm rate its model predicts at any threshold, so a
threshold moved by hand still comes with a rate. ``best_f1_threshold`` uses defective examples
when a line has them. Pure numpy/scipy: no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "DEFAULT_RULE",
    "DEFAULT_TARGET_FPR",
    "RULES",
    "TARGET_RULES",
    "best_f1_threshold",
    "expected_fpr",
    "threshold_for",
]

RULES = ("lognormal", "lognormal_fit", "normal", "mean_std", "quantile")
# The rules that take a target false-alarm rate (the others ignore it).
TARGET_RULES = ("lognormal", "lognormal_fit", "normal")
DEFAULT_RULE = "lognormal_fit"
DEFAULT_TARGET_FPR = 0.01
# Below this many scores a standard deviation means nothing: the rules fall back to the maximum.
MIN_SCORES = 3


def _as_array(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64).ravel()
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError("a threshold needs at least one finite score")
    return arr


def _family(arr: np.ndarray, rule: str) -> tuple[np.ndarray, bool]:
    """The sample the rule models as normal, and whether it is on the log scale."""
    if rule in ("lognormal", "lognormal_fit"):
        return np.log(np.maximum(arr, 1e-12)), True
    return arr, False


def _bound_scale(n: int) -> float:
    return math.sqrt(1.0 + 1.0 / n)


def threshold_for(
    scores: Sequence[float] | np.ndarray,
    rule: str = DEFAULT_RULE,
    target_fpr: float = DEFAULT_TARGET_FPR,
    *,
    k: float = 3.0,
    q: float = 0.99,
) -> float:
    """The threshold ``rule`` sets from held-out good ``scores`` (``target_fpr`` for the
    prediction-bound rules, ``k`` for mean_std, ``q`` for quantile)."""
    from scipy.stats import norm
    from scipy.stats import t as student_t

    if rule not in RULES:
        raise ValueError(f"unknown threshold rule {rule!r}; choose from {', '.join(RULES)}")
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"target_fpr must be in (0, 1), got {target_fpr}")
    arr = _as_array(scores)
    if rule == "quantile":
        return float(np.quantile(arr, q))
    if rule == "mean_std":
        std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
        return float(arr.mean() + k * std)
    if arr.size < MIN_SCORES:
        return float(arr.max())
    sample, log_scale = _family(arr, rule)
    n = sample.size
    if rule == "lognormal_fit":
        z = float(norm.ppf(1.0 - target_fpr))
        return math.exp(float(sample.mean()) + z * float(sample.std(ddof=1)))
    spread = float(sample.std(ddof=1)) * _bound_scale(n)
    bound = float(sample.mean()) + float(student_t.ppf(1.0 - target_fpr, n - 1)) * spread
    return math.exp(bound) if log_scale else bound


def expected_fpr(
    scores: Sequence[float] | np.ndarray, threshold: float, rule: str = DEFAULT_RULE
) -> float:
    """The false-alarm rate at ``threshold`` that ``rule``'s model of the good scores predicts.

    For mean_std and normal: the normal prediction distribution; for lognormal: the log-normal
    one; for lognormal_fit: the fitted log-normal itself; for quantile (no model): (held-out
    scores above threshold + 1) / (n + 1), the chance a new exchangeable score lands above it.
    """
    from scipy.stats import norm
    from scipy.stats import t as student_t

    arr = _as_array(scores)
    if rule == "quantile" or arr.size < MIN_SCORES:
        return float((np.sum(arr > threshold) + 1) / (arr.size + 1))
    family = rule if rule in ("lognormal", "lognormal_fit") else "normal"
    sample, log_scale = _family(arr, family)
    n = sample.size
    fitted = rule == "lognormal_fit"
    spread = float(sample.std(ddof=1)) * (1.0 if fitted else _bound_scale(n))
    if log_scale:
        if threshold <= 0:
            return 1.0
        at = math.log(threshold)
    else:
        at = threshold
    if spread <= 0:
        return 0.0 if at > float(sample.mean()) else 1.0
    z = (at - float(sample.mean())) / spread
    return float(norm.sf(z) if fitted else student_t.sf(z, n - 1))


def best_f1_threshold(
    good: Sequence[float] | np.ndarray, bad: Sequence[float] | np.ndarray
) -> tuple[float, float, float]:
    """(threshold, F1, recall) maximising F1 of "defective" over held-out good and defective
    example scores; the threshold sits midway between the two scores it separates."""
    g, b = _as_array(good), _as_array(bad)
    values = np.unique(np.concatenate([g, b]))
    cuts = np.concatenate([[values[0] - 1e-9], (values[:-1] + values[1:]) / 2, [values[-1] + 1]])
    best = (float(cuts[-1]), 0.0, 0.0)
    for cut in cuts:
        tp = float(np.sum(b >= cut))
        fp = float(np.sum(g >= cut))
        if tp == 0:
            continue
        precision, recall = tp / (tp + fp), tp / b.size
        f1 = 2 * precision * recall / (precision + recall)
        if f1 > best[1] + 1e-12:
            best = (float(cut), f1, recall)
    return best

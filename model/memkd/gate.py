"""The activation gate: is a new line version not worse than the active one, on the same images?

A fit that activates whatever it produced can replace a line scoring 0.97 with one scoring 0.59
without a word. Before a command activates a version by itself, both versions score the same
held-out images (chosen by the caller: images neither trained on) and each is judged at its own
threshold, because the threshold is part of what a version is:

- with defective images: image AUROC (ranking, threshold-free) and the verdicts at each
  version's threshold, summarised as balanced accuracy = 1 - (false-alarm rate + miss rate) / 2
  (a threshold change trades one rate for the other; this is the trade's net effect). The new
  version is worse when either falls by more than ``margin``.
- with good images only: the false-alarm rate at each version's threshold. Worse when it rises
  by more than ``margin``.

On a small set one image moves a rate by 1/n: the figures carry their counts, so whoever reads
the decision can see how much evidence it rests on. Scoring is ``LineModel.score`` with each
model's own preprocessing (input size, normalisation, region of interest).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from memkd.backbones import Teacher
from memkd.line_model import LineModel
from memkd.metrics import image_auroc
from memkd.precision import Precision
from memkd.train import ImageSource, load_batch

__all__ = [
    "DEFAULT_MARGIN",
    "GateDecision",
    "VersionFigures",
    "compare_versions",
    "decide",
    "figures",
    "score_images",
]

DEFAULT_MARGIN = 0.02


@dataclass(frozen=True)
class VersionFigures:
    """How one version did on the gate's images, at its own threshold."""

    threshold: float
    n_good: int
    n_bad: int
    false_alarm_rate: float | None
    miss_rate: float | None = None
    image_auroc: float | None = None
    balanced_accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VersionFigures:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


@dataclass(frozen=True)
class GateDecision:
    """Whether the candidate may be activated, both versions' figures and the reasons."""

    passed: bool
    margin: float
    candidate: VersionFigures
    incumbent: VersionFigures
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "margin": self.margin,
            "candidate": self.candidate.to_dict(),
            "incumbent": self.incumbent.to_dict(),
            "reasons": list(self.reasons),
        }


def figures(
    good_scores: Sequence[float] | np.ndarray,
    bad_scores: Sequence[float] | np.ndarray,
    threshold: float,
) -> VersionFigures:
    """A version's figures from its scores of the gate's good and defective images."""
    good = np.asarray(good_scores, dtype=np.float64).ravel()
    bad = np.asarray(bad_scores, dtype=np.float64).ravel()
    far = float(np.mean(good >= threshold)) if good.size else None
    miss = float(np.mean(bad < threshold)) if bad.size else None
    auroc = balanced = None
    if good.size and bad.size:
        labels = np.concatenate([np.zeros(good.size), np.ones(bad.size)])
        auroc = image_auroc(labels, np.concatenate([good, bad]))
        assert far is not None and miss is not None
        balanced = 1.0 - (far + miss) / 2.0
    return VersionFigures(float(threshold), int(good.size), int(bad.size), far, miss, auroc,
                          balanced)  # fmt: skip


def decide(
    candidate: VersionFigures, incumbent: VersionFigures, margin: float = DEFAULT_MARGIN
) -> GateDecision:
    """Not worse by more than ``margin`` on the figures both versions have (module docstring).

    Raises:
        ValueError: no images were scored, or the two were scored on different sets.
    """
    if not 0.0 <= margin < 1.0 or not math.isfinite(margin):
        raise ValueError(f"the gate margin must be in [0, 1), got {margin}")
    if (candidate.n_good, candidate.n_bad) != (incumbent.n_good, incumbent.n_bad):
        raise ValueError("the gate compares two versions on the same images")
    if candidate.n_good == 0:
        raise ValueError("the gate needs good images to compare the versions on")
    reasons: list[str] = []
    if candidate.n_bad:
        checks = (
            ("image AUROC", candidate.image_auroc, incumbent.image_auroc),
            ("balanced accuracy", candidate.balanced_accuracy, incumbent.balanced_accuracy),
        )
        for name, new, old in checks:
            if new is not None and old is not None and new < old - margin:
                reasons.append(f"{name} {new:.3f} vs {old:.3f} (more than {margin:g} lower)")
    else:
        new_far, old_far = candidate.false_alarm_rate, incumbent.false_alarm_rate
        assert new_far is not None and old_far is not None
        if new_far > old_far + margin:
            reasons.append(
                f"false alarms on good images {100 * new_far:.1f} % vs {100 * old_far:.1f} % "
                f"(more than {100 * margin:g} points higher)"
            )
    return GateDecision(not reasons, margin, candidate, incumbent, reasons)


def score_images(
    model: LineModel,
    teacher: Teacher,
    images: Sequence[ImageSource],
    precision: Precision | str = Precision.AUTO,
    chunk: int = 16,
) -> np.ndarray:
    """Image scores of ``images`` with the model's own preprocessing, ``chunk`` at a time."""
    out: list[float] = []
    for i in range(0, len(images), chunk):
        x = load_batch(images[i : i + chunk], model.input_size, model.mean, model.std, model.roi)
        out += model.score(teacher, x, precision).scores.float().cpu().tolist()
    return np.asarray(out, dtype=np.float64)


def compare_versions(
    candidate: LineModel,
    incumbent: LineModel,
    good: Sequence[ImageSource],
    bad: Sequence[ImageSource],
    teachers: tuple[Teacher, Teacher],
    margin: float = DEFAULT_MARGIN,
    precision: Precision | str = Precision.AUTO,
) -> GateDecision:
    """Score ``good`` and ``bad`` with both versions (``teachers``: the candidate's, the
    incumbent's) and ``decide``."""
    judged = []
    for model, teacher in zip((candidate, incumbent), teachers, strict=True):
        good_scores = score_images(model, teacher, good, precision)
        bad_scores = score_images(model, teacher, bad, precision)
        judged.append(figures(good_scores, bad_scores, model.threshold))
    return decide(judged[0], judged[1], margin)

"""Model and training settings of MemKD (see model/MEMKD.md §2-§5).

``ModelConfig`` is everything needed to rebuild a line's network; it is stored in the artifact.
``TrainConfig`` is how one fit was run; it is stored in the artifact's provenance. Both are frozen
and round-trip through plain JSON dicts; unknown keys are refused so that an artifact written by a
newer library is not silently misread.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, cast

from memkd.errors import ConfigError
from memkd.precision import Precision
from memkd.threshold import DEFAULT_RULE, DEFAULT_TARGET_FPR, RULES

__all__ = ["LEGACY_BACKBONE", "LEGACY_SCORE_TOPK", "ModelConfig", "TrainConfig"]

# The image score of artifacts that do not record one: the map's maximum.
LEGACY_SCORE_TOPK = 0.0
# The teacher of artifacts that do not name one: the first default, lite0.
LEGACY_BACKBONE = "tf_efficientnet_lite0"

Fusion = Literal["concat", "add"]
ThresholdRule = Literal["lognormal", "lognormal_fit", "normal", "mean_std", "quantile"]
_DEFAULT_RULE = cast(ThresholdRule, DEFAULT_RULE)
MemoryInit = Literal["random", "data"]
LrSchedule = Literal["constant", "cosine"]


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown setting(s) {', '.join(unknown)}")
    return cls(**data)


@dataclass(frozen=True)
class ModelConfig:
    """How to build a line's student network.

    Attributes:
        backbone: teacher name, a key of ``memkd.backbones.BACKBONES``. Default EfficientNet-Lite2:
            it beat Lite0 on the accuracy programme's validation sets on every training seed
            (model/README.md, "Arm 5"); Lite0 stays a choice (~0.7x the teacher's time).
        input_size: square input side in pixels; a multiple of 32 (the bottleneck is at stride 32).
        width_mult: scales every trained width except the outputs compared with the teacher.
        memory: NR memories on (MemKD) or off (plain Reverse Distillation).
        memory_items: L, key/value pairs per memory.
        temperature: softmax temperature of the memory read (not given by the paper).
        fusion: how the recalled normality joins the student feature: "concat" (paper) or "add".
        score_topk: the image score is the mean of this fraction of the blurred map's highest
            pixels; 0 = its maximum (the paper's score). Default 1 %: it beat the maximum on
            the accuracy programme's validation sets at the fit defaults (model/README.md,
            "Image score"). An artifact that does not name it was calibrated on the maximum and
            keeps it (``from_dict``).
    """

    backbone: str = "tf_efficientnet_lite2"
    input_size: int = 256
    width_mult: float = 1.0
    memory: bool = True
    memory_items: int = 50
    temperature: float = 0.1
    fusion: Fusion = "concat"
    score_topk: float = 0.01

    def __post_init__(self) -> None:
        if self.input_size < 64 or self.input_size % 32:
            raise ConfigError(
                f"input_size must be a multiple of 32 and >= 64, got {self.input_size}"
            )
        if not 0.0 < self.width_mult <= 16.0:
            raise ConfigError(f"width_mult must be in (0, 16], got {self.width_mult}")
        if self.memory_items < 1:
            raise ConfigError(f"memory_items must be >= 1, got {self.memory_items}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.fusion not in ("concat", "add"):
            raise ConfigError(f"fusion must be 'concat' or 'add', got {self.fusion!r}")
        if not 0.0 <= self.score_topk < 1.0:
            raise ConfigError(f"score_topk must be in [0, 1), got {self.score_topk}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        # Artifacts from before score_topk existed were scored, and calibrated, on the maximum;
        # every artifact names its teacher, but one that did not would be lite0's.
        legacy = {"backbone": LEGACY_BACKBONE, "score_topk": LEGACY_SCORE_TOPK}
        return _from_dict(cls, {**legacy, **data})


@dataclass(frozen=True)
class TrainConfig:
    """How to train one line model.

    ``steps`` wins over ``epochs``; with neither, ``DEFAULT_STEPS`` optimiser steps are run.
    One epoch = ceil(n_train / batch_size) steps.

    Calibration: ``holdout_fraction`` of the good images (at least ``min_holdout`` when there are
    enough images; at least one image always stays for training) is never trained on; their
    scores set the threshold. ``threshold_rule`` (``memkd.threshold``; default
    ``DEFAULT_RULE``, the fitted log-normal's ``1 - target_fpr`` quantile) sets it for
    ``target_fpr``; ``"mean_std"`` (the first wave's rule) uses mean + k*std; ``"quantile"``
    ``threshold_quantile`` (with a few held-out images: their maximum).

    ``feature_cache_mb`` bounds the cache of frozen-teacher features of the training images
    (no augmentation, so they never change during a fit); above it they are recomputed per step.

    ``precision`` is the compute precision of the forward passes and of the calibration scores
    (``memkd.precision``: auto, fp32, bf16, fp16), not the artifact's storage dtype.

    Memory (MEMKD.md §5): ``memory_init`` "random" draws keys and values from N(0, 1); "data"
    starts both from teacher features of training pixels at the memory's stage, so the next
    decoder stage never receives noise. ``memory_warmup`` blends the recalled values in linearly
    over that fraction of the steps.

    Schedule: ``lr_schedule`` "constant" or "cosine" (to zero over the run). ``early_stopping``
    keeps the student whose held-out KD loss was lowest, checked every ``eval_every`` steps (0:
    once per epoch); ``max_seconds`` bounds the training loop's wall time (the best student so
    far is kept). The defaults (1000 cosine steps, early stopping every 50) are the accuracy
    programme's choice (model/README.md): they beat 300 constant steps on every validation
    category, memory on and off. ``stop_fraction`` > 0 stops on a second held-out set of that
    fraction of the good images (at least 2), disjoint from the calibration images; 0 (the
    default) stops on the calibration images. Stopping apart removed most of the low bias of
    the calibration scores but did not bring false-alarm rates to their targets, and cost
    accuracy (model/README.md, "Arm 6").
    """

    DEFAULT_STEPS = 1000

    steps: int | None = None
    epochs: int | None = None
    batch_size: int = 16
    lr: float = 0.005
    betas: tuple[float, float] = (0.5, 0.999)
    exemplars: int = 16
    w_nm: float = 0.1
    w_orth: float = 0.1
    seed: int = 0
    holdout_fraction: float = 0.15
    min_holdout: int = 4
    threshold_rule: ThresholdRule = _DEFAULT_RULE
    threshold_k: float = 3.0
    threshold_quantile: float = 0.99
    target_fpr: float = DEFAULT_TARGET_FPR
    device: str | None = None
    precision: Precision = Precision.AUTO
    feature_cache_mb: int = 2048
    log_every: int = 10
    memory_init: MemoryInit = "random"
    memory_warmup: float = 0.0
    lr_schedule: LrSchedule = "cosine"
    early_stopping: bool = True
    eval_every: int = 50
    max_seconds: float | None = None
    stop_fraction: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.precision not in set(Precision):
            choices = ", ".join(p.value for p in Precision)
            raise ConfigError(f"precision must be one of {choices}, got {self.precision!r}")
        object.__setattr__(self, "precision", Precision(self.precision))
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1 or self.exemplars < 1:
            raise ConfigError("batch_size and exemplars must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ConfigError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if not 0.0 <= self.stop_fraction < 1.0:
            raise ConfigError(f"stop_fraction must be in [0, 1), got {self.stop_fraction}")
        if self.threshold_rule not in RULES:
            raise ConfigError(
                f"threshold_rule must be one of {', '.join(RULES)}, got {self.threshold_rule!r}"
            )
        if not 0.0 < self.target_fpr < 1.0:
            raise ConfigError(f"target_fpr must be in (0, 1), got {self.target_fpr}")
        if not 0.0 < self.threshold_quantile <= 1.0:
            raise ConfigError(
                f"threshold_quantile must be in (0, 1], got {self.threshold_quantile}"
            )
        if self.memory_init not in ("random", "data"):
            raise ConfigError(f"memory_init must be 'random' or 'data', got {self.memory_init!r}")
        if not 0.0 <= self.memory_warmup <= 1.0:
            raise ConfigError(f"memory_warmup must be in [0, 1], got {self.memory_warmup}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ConfigError(
                f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}"
            )
        if self.eval_every < 0:
            raise ConfigError(f"eval_every must be >= 0, got {self.eval_every}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ConfigError(f"max_seconds must be > 0, got {self.max_seconds}")

    def steps_per_epoch(self, n_train: int) -> int:
        return -(-n_train // min(self.batch_size, max(n_train, 1)))

    def total_steps(self, n_train: int) -> int:
        """Optimiser steps this config runs on ``n_train`` training images."""
        if self.steps is not None:
            return self.steps
        if self.epochs is not None:
            return self.epochs * self.steps_per_epoch(n_train)
        return self.DEFAULT_STEPS

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        data["precision"] = self.precision.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, data)

"""Memory-only refit: re-learn a line's NR memories on new good images, the rest frozen.

A plant changes a supplier, a fixture or the lighting far more often than its product. The NR
memories (model/MEMKD.md §3-§4) are the part of MemKD that holds "what normal looks like" as
explicit items, so they are the part that should follow such a change cheaply. ``refit_memory``
starts from a trained line model, freezes the bottleneck and the decoder (every parameter, and
BatchNorm in eval mode throughout, so its running statistics never move) and trains only the
memories' keys and values with the fit's own objective on the new images: L_KD through the
frozen student (keys and values learn through the recall) + w_nm * L_NM (NEL, exemplars drawn
afresh each step) + w_orth * L_Orth. It then recalibrates the threshold on a seeded held-out
slice of the new images with the same rule as ``memkd.train.fit``.

Why it is a small fraction of a fit: the teacher's features and the frozen first decoder stage
are computed once per image (no augmentation), each step runs only decoder stages 2-3 and the
recall, no weight gradient of the student is ever computed, and far fewer steps are needed for
~0.02 M parameters (lite0) than for the ~1 M of the whole student. ``bench/refit.py`` measures
the ratio and what it recovers after a shift in the good images.

The result is a whole ``LineModel`` (the parent's network with new memories and calibration);
``memkd.delta.save_delta(model, path, parent, memory_tensor_names(model))`` writes the delta.
Shares the fit's building blocks (feature cache, batch order, held-out split, calibration
scoring) from ``memkd.train``, so both schedules see data the same way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from memkd.anomaly import Calibration
from memkd.backbones import Teacher
from memkd.config import TrainConfig
from memkd.line_model import LineModel, check_teacher
from memkd.losses import kd_loss, nm_loss, orth_loss
from memkd.network import MemKDStudent
from memkd.precision import Precision, autocast, resolve_precision
from memkd.train import (
    FitResult,
    ImageSource,
    Progress,
    _batches,
    _FeatureSource,
    _init_memories,
    _score_all,
    holdout_split,
    load_batch,
    resolve_device,
    run_provenance,
)

__all__ = ["MemoryInit", "refit_memory"]

MemoryInit = Literal["parent", "data"]


def refit_memory(
    parent: LineModel,
    images: Sequence[ImageSource],
    teacher: Teacher,
    train_config: TrainConfig | None = None,
    progress: Progress | None = None,
    *,
    init: MemoryInit = "parent",
) -> FitResult:
    """Re-learn ``parent``'s memories on new good ``images``; ``parent`` itself is not changed.

    Args:
        parent: the line model to start from (its network, input size, normalisation and region
            of interest are kept); it must have memories.
        images: new good images; a seeded slice (``train_config``'s holdout rule) is held out
            for the calibration.
        teacher: the frozen teacher ``parent`` was trained with.
        train_config: steps/epochs, batch size, lr, betas, exemplars, loss weights, seed, the
            held-out split and threshold rule, precision, feature cache budget. The schedule is
            a constant lr (early stopping and warm-up belong to full fits).
        progress: called after every step as ``progress(step, total_steps, losses)``.
        init: "parent" starts from the parent's memories; "data" re-seeds keys and values from
            the teacher's features of the new images (``NRMemory.init_from``).
    """
    tcfg = train_config or TrainConfig()
    if not parent.config.memory:
        raise ValueError("this line model has no memory (plain RD): only a full fit can retrain it")
    if parent.tiling is not None:
        raise ValueError(
            "memory-only refit of a tiled line is not supported yet (its memories learn from tiles "
            "and its threshold from frame scores): run a full fit with the same --tile"
        )
    if init not in ("parent", "data"):
        raise ValueError(f"init must be 'parent' or 'data', got {init!r}")
    check_teacher(parent.record(), teacher)
    device = resolve_device(tcfg.device if tcfg.device is not None else teacher.device)
    precision = resolve_precision(tcfg.precision, device)
    started = time.perf_counter()
    torch.manual_seed(tcfg.seed)
    np.random.seed(tcfg.seed % 2**32)

    model = LineModel.from_record(parent.record(), parent.student.state_dict())
    model.to(device)
    student = model.student
    x_all = load_batch(images, model.input_size, model.mean, model.std, model.roi)
    train_idx, hold_idx = holdout_split(len(x_all), tcfg)
    source = _FeatureSource(teacher, x_all[train_idx], device, tcfg.feature_cache_mb, precision)
    n_train = len(train_idx)
    gen = torch.Generator().manual_seed(tcfg.seed)
    if init == "data":
        _init_memories(student, source, n_train, gen)
    params = _freeze_all_but_memories(student)
    front = _FrozenFront(student, source, n_train, precision)
    opt = torch.optim.Adam(params, lr=tcfg.lr, betas=tcfg.betas)
    total = tcfg.total_steps(n_train)
    batches = _batches(n_train, min(tcfg.batch_size, n_train), gen)
    history: list[dict[str, float]] = []
    losses: dict[str, float] = {}
    for step in range(1, total + 1):
        idx = next(batches)
        t_feats = source.get(idx)
        with autocast(device, precision):
            s_feats = student.later_stages(front.get(idx))
        l_kd = kd_loss(t_feats, s_feats)
        ex = source.get(torch.randperm(n_train, generator=gen)[: min(tcfg.exemplars, n_train)])
        with autocast(device, precision):
            l_nm = nm_loss(student.memory_list, [ex[2], ex[1]])
        l_orth = orth_loss(student.memory_list)
        loss = l_kd + tcfg.w_nm * l_nm + tcfg.w_orth * l_orth
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses = {
            "kd": float(l_kd.detach()),
            "nm": float(l_nm.detach()),
            "orth": float(l_orth.detach()),
            "loss": float(loss.detach()),
        }
        if not math.isfinite(losses["loss"]):
            raise FloatingPointError(f"the refit diverged at step {step} (loss {losses['loss']})")
        if step % tcfg.log_every == 0 or step == total:
            history.append({"step": step, **losses})
        if progress is not None:
            progress(step, total, dict(losses))
    for p in student.parameters():
        p.requires_grad_(True)  # an ordinary model again (saving, a later full fit)
    student.eval()
    train_seconds = time.perf_counter() - started

    calib_idx, calib_source = (hold_idx, "holdout") if hold_idx else (train_idx, "train")
    scores = _score_all(model, teacher, x_all[calib_idx], precision)
    model.calibration = Calibration.from_scores(
        scores, tcfg.threshold_rule, tcfg.threshold_k, tcfg.threshold_quantile, tcfg.target_fpr
    )
    refit = {"kind": "memory", "init": init, "parent_n_train": parent.provenance.get("n_train")}
    model.provenance = {
        "n_train": n_train,
        "n_holdout": len(hold_idx),
        **run_provenance(tcfg, total, losses, train_seconds, device, precision),
        "refit": refit,
    }
    report = {
        "n_images": len(x_all),
        "n_train": n_train,
        "n_holdout": len(hold_idx),
        "calibration_source": calib_source,
        "holdout_scores": [round(s, 6) for s in scores],
        "steps": total,
        "seed": tcfg.seed,
        "device": str(device),
        "precision": precision.value,
        "teacher_features_cached": source.cached,
        "train_seconds": round(train_seconds, 2),
        "final_losses": losses,
        "loss_history": history,
        "calibration": model.calibration.to_dict(),
        "train_config": tcfg.to_dict(),
        "refit": refit,
    }
    return FitResult(model=model, report=report)


def _freeze_all_but_memories(student: MemKDStudent) -> list[torch.nn.Parameter]:
    """Only the memories' keys and values learn; BatchNorm stays in eval mode (running stats
    frozen with the weights they normalise for)."""
    student.eval()
    memory = {id(p) for m in student.memory_list for p in m.parameters()}
    trained = []
    for p in student.parameters():
        p.requires_grad_(id(p) in memory)
        if id(p) in memory:
            trained.append(p)
    return trained


class _FrozenFront:
    """Decoder stage 1's output per training image: frozen, so computed once when the teacher
    features are cached (else per batch)."""

    def __init__(
        self, student: MemKDStudent, source: _FeatureSource, n: int, precision: Precision
    ) -> None:
        self.student, self.source, self.precision = student, source, precision
        self.cached: torch.Tensor | None = None
        if source.cached:
            parts = [self._compute(torch.arange(i, min(i + 16, n))) for i in range(0, n, 16)]
            self.cached = torch.cat(parts)

    @torch.no_grad()
    def _compute(self, idx: torch.Tensor) -> torch.Tensor:
        feats = self.source.get(idx)
        with autocast(feats[0].device, self.precision):
            return self.student.first_stage(feats).float()

    def get(self, idx: torch.Tensor) -> torch.Tensor:
        if self.cached is not None:
            return self.cached[idx.to(self.cached.device)]
        return self._compute(idx)

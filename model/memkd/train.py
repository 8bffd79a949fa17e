"""Training a line model: MemKD's schedule (model/MEMKD.md §4-§5).

Adam (lr 0.005, betas (0.5, 0.999), no weight decay) over bottleneck + decoder + memories;
L = L_KD + w_nm * L_NM + w_orth * L_Orth with NEL exemplars drawn afresh from the training images
every step. No augmentation, so the frozen teacher's features of the training images never change
during a fit: they are computed once and cached (within ``feature_cache_mb``), which makes a CPU
fit several times faster without changing a single gradient. A seeded slice of the good images is
held out; their scores calibrate the threshold. Nothing here looks at test data.

Tiled lines (``memkd.tiling``): every good frame is cut into its tiles, and the tiles are the
training inputs. The held-out slice is drawn over frames, not tiles (a frame's tiles are either
all trained on or all held out), and the threshold is calibrated on frame scores, the maximum
over a held-out frame's tiles, which is what the worker compares with it.

Precision (``TrainConfig.precision``, ``memkd.precision``): the teacher's features and the
student's forward run under the autocast of the resolved precision (``auto``: bf16 where the
device does it natively, else fp32); losses, the held-out scores and the calibration statistics
are float32. The resolved precision is recorded (``provenance["precision"]``): it is the
precision the threshold belongs to. On CUDA the student also trains in channels_last.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from memkd.anomaly import Calibration
from memkd.backbones import Teacher, load_teacher
from memkd.config import ModelConfig, TrainConfig
from memkd.line_model import LineModel, code_version
from memkd.losses import kd_loss, nm_loss, orth_loss
from memkd.network import MemKDStudent
from memkd.precision import Precision, autocast, resolve_precision
from memkd.preprocess import load_for_model, load_image, preprocess
from memkd.tiling import Tiling, cut_tiles, frame_scores

__all__ = [
    "FitResult",
    "Progress",
    "fit",
    "holdout_split",
    "load_batch",
    "resolve_device",
    "run_provenance",
    "stop_split",
]

Progress = Callable[[int, int, dict[str, float]], None]
ImageSource = Path | str | bytes | Image.Image


@dataclass
class FitResult:
    """The trained, calibrated line model and a JSON-able report of the fit."""

    model: LineModel
    report: dict[str, Any] = field(default_factory=dict)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" -> CUDA when present, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_batch(
    images: Sequence[ImageSource],
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    roi: Sequence[int] | None = None,
) -> torch.Tensor:
    """Load and preprocess images into one [N, 3, size, size] tensor (the shared preprocessing)."""
    return torch.stack(
        [preprocess(load_for_model(img, size, roi), size, mean, std, roi) for img in images]
    )


def _tiled_inputs(
    images: Sequence[ImageSource],
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    roi: Sequence[int] | None,
    tiling: Tiling,
) -> tuple[torch.Tensor, list[int]]:
    """All tiles of all frames [sum(counts), 3, size, size] and the tile count of each frame."""
    tiles: list[torch.Tensor] = []
    for img in images:
        frame, _ = cut_tiles(load_image(img), tiling, size, mean, std, roi)
        tiles.append(frame)
    return torch.cat(tiles), [len(t) for t in tiles]


def _tile_indices(frames: list[int], starts: list[int], counts: list[int]) -> list[int]:
    return [starts[f] + i for f in frames for i in range(counts[f])]


def holdout_split(n: int, cfg: TrainConfig) -> tuple[list[int], list[int]]:
    """Seeded (train indices, held-out indices); at least one image always stays for training."""
    if n < 1:
        raise ValueError("fit needs at least one good image")
    n_hold = 0
    if cfg.holdout_fraction > 0:
        n_hold = max(round(cfg.holdout_fraction * n), min(cfg.min_holdout, n // 5))
    n_hold = min(n_hold, n - 1)
    gen = torch.Generator().manual_seed(cfg.seed + 7919)
    perm = torch.randperm(n, generator=gen).tolist()
    return sorted(perm[n_hold:]), sorted(perm[:n_hold])


def stop_split(train: list[int], n: int, cfg: TrainConfig) -> tuple[list[int], list[int]]:
    """Seeded (train indices, early-stopping indices) out of ``train`` (``n`` images in all):
    ``stop_fraction`` of them, at least 2, when early stopping is on; none otherwise. At least
    one image always stays for training."""
    if not cfg.early_stopping or cfg.stop_fraction <= 0 or len(train) < 2:
        return train, []
    n_stop = min(max(round(cfg.stop_fraction * n), 2), len(train) - 1)
    gen = torch.Generator().manual_seed(cfg.seed + 104729)
    perm = torch.randperm(len(train), generator=gen).tolist()
    return sorted(train[i] for i in perm[n_stop:]), sorted(train[i] for i in perm[:n_stop])


class _FeatureSource:
    """Teacher features of the training images: cached when they fit the budget, else recomputed.

    Computed under the fit's autocast (the features the student will see when the line scores at
    that precision) and kept in float32.
    """

    def __init__(
        self,
        teacher: Teacher,
        x: torch.Tensor,
        device: torch.device,
        budget_mb: int,
        precision: Precision,
    ):
        self.teacher, self.x, self.device, self.precision = teacher, x, device, precision
        probe = teacher(x[:1].to(teacher.device))
        per_image = sum(f.numel() * 4 for f in probe)
        self.cached = per_image * len(x) <= budget_mb * 2**20
        self.feats: list[torch.Tensor] | None = None
        if self.cached:
            self.feats = [torch.cat(fs).to(device) for fs in zip(*self._compute(x), strict=True)]

    def _compute(self, x: torch.Tensor, chunk: int = 16) -> list[list[torch.Tensor]]:
        with autocast(self.teacher.device, self.precision):
            return [
                [f.float() for f in self.teacher(x[i : i + chunk].to(self.teacher.device))]
                for i in range(0, len(x), chunk)
            ]

    def get(self, idx: torch.Tensor) -> list[torch.Tensor]:
        if self.feats is not None:
            return [f[idx.to(f.device)] for f in self.feats]
        return [
            torch.cat(fs).to(self.device) for fs in zip(*self._compute(self.x[idx]), strict=True)
        ]


def _batches(n: int, batch: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless stream of full batches from concatenated random permutations (epoch order)."""
    buf: list[int] = []
    while True:
        while len(buf) < batch:
            buf += torch.randperm(n, generator=gen).tolist()
        yield torch.tensor(buf[:batch])
        buf = buf[batch:]


def fit(
    images: Sequence[ImageSource],
    model_config: ModelConfig | None = None,
    train_config: TrainConfig | None = None,
    teacher: Teacher | None = None,
    progress: Progress | None = None,
    *,
    roi: Sequence[int] | None = None,
    tiling: Tiling | None = None,
) -> FitResult:
    """Train and calibrate a line model on good images.

    Args:
        images: good images (paths, bytes or PIL images); a seeded slice is held out.
        model_config, train_config: defaults when None.
        teacher: the frozen teacher (loaded with its default weights when None); it must match
            ``model_config.backbone``.
        progress: called after every step as ``progress(step, total_steps, losses)``.
        roi: the line's crop box (x, y, w, h), applied before resizing, stored in the model.
        tiling: cut each frame (inside ``roi``) into these tiles and train on the tiles; the
            threshold is calibrated on frame scores (max over tiles). Stored in the model.
    """
    mcfg = model_config or ModelConfig()
    tcfg = train_config or TrainConfig()
    device = resolve_device(
        tcfg.device if tcfg.device is not None else (teacher.device if teacher else None)
    )
    precision = resolve_precision(tcfg.precision, device)  # fp16 off CUDA fails before any work
    if teacher is None:
        teacher = load_teacher(mcfg.backbone, device=device)
    if teacher.name != mcfg.backbone:
        raise ValueError(f"teacher {teacher.name} does not match backbone {mcfg.backbone}")
    if teacher.device.type != device.type:
        raise ValueError(
            f"the teacher is on {teacher.device} but training runs on {device}: load the teacher "
            "on the training device"
        )
    cuda = device.type == "cuda"
    started = time.perf_counter()
    torch.manual_seed(tcfg.seed)
    np.random.seed(tcfg.seed % 2**32)

    if tiling is None:
        x_all = load_batch(images, mcfg.input_size, teacher.mean, teacher.std, roi)
        counts = [1] * len(x_all)
    else:
        x_all, counts = _tiled_inputs(
            images, mcfg.input_size, teacher.mean, teacher.std, roi, tiling
        )
    starts = np.cumsum([0, *counts[:-1]]).tolist()
    train_frames, hold_frames = holdout_split(len(counts), tcfg)
    train_frames, stop_frames = stop_split(train_frames, len(counts), tcfg)
    train_idx = _tile_indices(train_frames, starts, counts)
    hold_idx = _tile_indices(hold_frames, starts, counts)
    stop_idx = _tile_indices(stop_frames, starts, counts) if stop_frames else hold_idx
    x_train = x_all[train_idx]
    source = _FeatureSource(teacher, x_train, device, tcfg.feature_cache_mb, precision)

    student = MemKDStudent(mcfg, teacher.channels, teacher.spec.signed_features).to(device)
    if cuda:
        student = student.to(memory_format=torch.channels_last)
    n_train = len(train_idx)
    gen = torch.Generator().manual_seed(tcfg.seed)
    if mcfg.memory and tcfg.memory_init == "data":
        _init_memories(student, source, n_train, gen)
    opt = torch.optim.Adam(student.parameters(), lr=tcfg.lr, betas=tcfg.betas)
    total = tcfg.total_steps(n_train)
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        if tcfg.lr_schedule == "cosine"
        else None
    )
    warmup_steps = round(tcfg.memory_warmup * total)
    stopper = _EarlyStopping.create(tcfg, teacher, x_all[stop_idx], device, precision, n_train)
    batches = _batches(n_train, min(tcfg.batch_size, n_train), gen)
    history: list[dict[str, float]] = []
    losses: dict[str, float] = {}
    stopped_by: str | None = None
    step = 0
    student.train()
    for step in range(1, total + 1):
        if tcfg.max_seconds is not None and time.perf_counter() - started > tcfg.max_seconds:
            stopped_by, step = "max_seconds", step - 1
            break
        student.recall_gain = min(1.0, step / warmup_steps) if warmup_steps else 1.0
        t_feats = source.get(next(batches))
        with autocast(device, precision):
            s_feats = student(t_feats)
        l_kd = kd_loss(t_feats, s_feats)
        loss = l_kd
        losses = {"kd": float(l_kd.detach())}
        if mcfg.memory:
            ex = source.get(torch.randperm(n_train, generator=gen)[: min(tcfg.exemplars, n_train)])
            with autocast(device, precision):
                l_nm = nm_loss(student.memory_list, [ex[2], ex[1]])
            l_orth = orth_loss(student.memory_list)
            loss = loss + tcfg.w_nm * l_nm + tcfg.w_orth * l_orth
            losses |= {"nm": float(l_nm.detach()), "orth": float(l_orth.detach())}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        losses["loss"] = float(loss.detach())
        if not math.isfinite(losses["loss"]):
            raise FloatingPointError(f"training diverged at step {step} (loss {losses['loss']})")
        due = stopper is not None and (step % stopper.every == 0 or step == total)
        if stopper is not None and due and step >= warmup_steps:
            losses["holdout_kd"] = stopper.check(student, step)
        if step % tcfg.log_every == 0 or step == total:
            history.append({"step": step, **losses})
        if progress is not None:
            progress(step, total, dict(losses))
    student.recall_gain = 1.0
    if stopper is not None:
        stopper.restore(student)
    student.eval()
    train_seconds = time.perf_counter() - started

    model = LineModel(mcfg, student, teacher.describe(), roi=roi, tiling=tiling)
    calib_frames, calib_source = (
        (hold_frames, "holdout") if hold_frames else (train_frames, "train")
    )
    tile_scores = _score_all(
        model, teacher, x_all[_tile_indices(calib_frames, starts, counts)], precision
    )
    scores = frame_scores(tile_scores, [counts[f] for f in calib_frames])
    model.calibration = Calibration.from_scores(
        scores, tcfg.threshold_rule, tcfg.threshold_k, tcfg.threshold_quantile, tcfg.target_fpr
    )
    report = {
        "n_images": len(counts),
        "n_train": len(train_frames),
        "n_holdout": len(hold_frames),
        "n_stop": len(stop_frames),
        "n_train_inputs": n_train,
        "tiling": tiling.to_dict() if tiling is not None else None,
        "calibration_source": calib_source,
        "holdout_scores": [round(s, 6) for s in scores],
        "steps": total,
        "seed": tcfg.seed,
        "device": str(device),
        "precision": precision.value,
        "teacher_features_cached": source.cached,
        "steps_run": step,
        "stopped_by": stopped_by,
        "best_step": stopper.best_step if stopper is not None else None,
        "train_seconds": round(train_seconds, 2),
        "final_losses": losses,
        "loss_history": history,
        "calibration": model.calibration.to_dict(),
        "train_config": tcfg.to_dict(),
        "model_config": mcfg.to_dict(),
    }
    model.provenance = {
        "n_train": len(train_frames),
        "n_holdout": len(hold_frames),
        **({"n_train_tiles": n_train} if tiling is not None else {}),
        **run_provenance(tcfg, total, losses, train_seconds, device, precision),
    }
    return FitResult(model=model, report=report)


def run_provenance(
    tcfg: TrainConfig,
    steps: int,
    losses: dict[str, float],
    train_seconds: float,
    device: torch.device,
    precision: Precision,
) -> dict[str, Any]:
    """What every training run (a fit, a memory refit) records of how it ran, in the artifact."""
    return {
        "seed": tcfg.seed,
        "steps": steps,
        "train_config": tcfg.to_dict(),
        "final_losses": losses,
        "train_seconds": round(train_seconds, 2),
        "device": str(device),
        "precision": precision.value,
        "code_version": code_version(),
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "metrics": {},
    }


@torch.no_grad()
def _init_memories(
    student: MemKDStudent, source: _FeatureSource, n_train: int, gen: torch.Generator
) -> None:
    """Memory k starts from the teacher's features at the stage it recalls (MEMKD.md §5)."""
    idx = torch.randperm(n_train, generator=gen)[: min(n_train, 64)]
    feats = source.get(idx)
    for memory, stage in zip(student.memory_list, (feats[2], feats[1]), strict=True):
        memory.init_from(stage, gen)


class _EarlyStopping:
    """Keeps the student whose KD loss on the held-out good images was lowest (MEMKD.md §5)."""

    def __init__(self, feats: list[torch.Tensor], every: int, precision: Precision) -> None:
        self.feats, self.every, self.precision = feats, every, precision
        self.best = math.inf
        self.best_step = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    @classmethod
    def create(
        cls, tcfg: TrainConfig, teacher: Teacher, x_hold: torch.Tensor, device: torch.device,
        precision: Precision, n_train: int,
    ) -> _EarlyStopping | None:  # fmt: skip
        if not tcfg.early_stopping or len(x_hold) == 0:
            return None  # nothing held out: nothing to stop on
        source = _FeatureSource(teacher, x_hold, device, 2**20, precision)
        every = tcfg.eval_every or tcfg.steps_per_epoch(n_train)
        return cls(source.get(torch.arange(len(x_hold))), every, precision)

    @torch.no_grad()
    def check(self, student: MemKDStudent, step: int) -> float:
        student.eval()
        with autocast(self.feats[0].device, self.precision):
            loss = float(kd_loss(self.feats, student(self.feats)))
        student.train()
        if loss < self.best:
            self.best, self.best_step = loss, step
            self.best_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
        return loss

    def restore(self, student: MemKDStudent) -> None:
        if self.best_state is not None:
            student.load_state_dict(self.best_state)


def _score_all(
    model: LineModel, teacher: Teacher, x: torch.Tensor, precision: Precision, chunk: int = 16
) -> list[float]:
    out: list[float] = []
    for i in range(0, len(x), chunk):
        out += model.score(teacher, x[i : i + chunk], precision).scores.float().cpu().tolist()
    return out

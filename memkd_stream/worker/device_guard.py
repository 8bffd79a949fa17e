"""What a failed batch means: one bad input, or a device that has stopped working.

A model exception used to dead-letter the whole batch as ``model-error``. On a GPU that hits a
sticky CUDA error every batch fails, so the worker turned into a dead-letter black hole that
committed everything while its probes stayed green. The rules, by exception type:

- ``torch.OutOfMemoryError``: the batch is split in halves and each half is tried again; out of
  memory for a single image is a device fault.
- ``torch.AcceleratorError`` (a CUDA error): a device fault.
- any other error: each image is tried again alone. Those that fail alone while others succeed
  are ``model-error`` (their own fault). When every image fails alone, a plain gray image is
  scored: if that fails too, it is a device fault, else each image is a ``model-error``.

A line's shadow version (``lines shadow``) is scored inside the same call on the same teacher
features, but its errors are caught in ``Engine.score_batch``: they reach none of these rules.

A device fault opens the circuit (``DeviceFault``): the worker stops consuming, dead-letters
nothing more, fails its probes and exits 4 after leaving the group; the records stay
uncommitted for a worker whose device works.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from memkd_stream.errors import ErrorCode, MemkdStreamError
from memkd_stream.worker.engine import Engine, LoadedLine, ShadowScores
from memkd_stream.worker.work_item import WorkItem

__all__ = ["DeviceFault", "DeviceGuard", "Scored"]


class DeviceFault(MemkdStreamError):
    """The device cannot score anything: the worker must stop and be restarted."""

    code: str = ErrorCode.DEVICE_FAULT


@dataclass
class Scored:
    """Some items of a batch, scored together."""

    items: list[WorkItem]
    maps: np.ndarray  # [n, H, W] float32
    scores: list[float]
    forward_s: float
    shadow: ShadowScores | None = None  # the line's shadow version, on the same features


class DeviceGuard:
    """Scores a batch on the engine and applies the rules above."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def run(
        self, loaded: LoadedLine, items: list[WorkItem]
    ) -> tuple[list[Scored], list[tuple[WorkItem, BaseException]]]:
        """Score ``items``: what scored, and the items that failed on their own.

        Raises:
            DeviceFault: the device, not an input, is failing.
        """
        try:
            return [self._score(loaded, items)], []
        except torch.OutOfMemoryError as exc:
            if len(items) == 1:
                raise DeviceFault(f"out of memory scoring a single image: {exc}") from exc
            half = len(items) // 2
            first, failed_first = self.run(loaded, items[:half])
            second, failed_second = self.run(loaded, items[half:])
            return first + second, failed_first + failed_second
        except torch.AcceleratorError as exc:
            raise DeviceFault(f"device error: {exc}") from exc
        except Exception:
            return self._one_by_one(loaded, items)

    def _one_by_one(
        self, loaded: LoadedLine, items: list[WorkItem]
    ) -> tuple[list[Scored], list[tuple[WorkItem, BaseException]]]:
        scored: list[Scored] = []
        failed: list[tuple[WorkItem, BaseException]] = []
        for item in items:
            try:
                scored.append(self._score(loaded, [item]))
            except (torch.OutOfMemoryError, torch.AcceleratorError) as exc:
                raise DeviceFault(f"device error scoring a single image: {exc}") from exc
            except Exception as exc:
                failed.append((item, exc))
        if failed and not scored:
            self._check_with_a_plain_image(loaded, failed[0][1])
        return scored, failed

    def _check_with_a_plain_image(self, loaded: LoadedLine, first: BaseException) -> None:
        size = int(loaded.model.config.input_size)
        try:
            self.engine.score(loaded, torch.zeros(1, 3, size, size))
        except Exception as exc:
            raise DeviceFault(
                f"every image failed, and so did a plain gray one ({type(exc).__name__}: "
                f"{exc}; the batch's error: {type(first).__name__}: {first})"
            ) from exc

    def _score(self, loaded: LoadedLine, items: list[WorkItem]) -> Scored:
        started = time.perf_counter()
        batch = torch.stack([_tensor(item) for item in items])
        result, shadow = self.engine.score_batch(loaded, batch)  # shadow failures never raise
        maps = result.maps[:, 0].detach().float().cpu().numpy()
        scores = [float(s) for s in result.scores.detach().float().cpu()]
        return Scored(items, maps, scores, time.perf_counter() - started, shadow)


def _tensor(item: WorkItem) -> torch.Tensor:
    if item.decoded is None:
        raise RuntimeError(f"work item {item.tp}:{item.offset} reached inference undecoded")
    return item.decoded.tensor

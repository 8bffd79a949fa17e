"""Micro-batching of decoded images, per line and model version (DESIGN.md §1).

A batch runs one line's model at one version, so items are grouped by a key (the worker uses
``(line, version)``). A group is ready when it holds ``max_batch`` items or when its oldest item
has waited ``max_wait_s``. An item may weigh more than one (a tiled frame weighs its tile count,
``worker.tiles``): then ``max_batch`` bounds a group's weight, an item that would push an open
group past it closes that group first, and an item heavier than ``max_batch`` is a group alone.
Groups are independent: a line that sees one image a minute is flushed by its own deadline and
never waits behind, or holds up, a busy line. Ready groups come out oldest-first so a trickle
line is not starved while a busy line keeps filling batches.

Not thread-safe: the inference thread owns its batcher.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Batch", "MicroBatcher"]

T = TypeVar("T")


@dataclass
class Batch(Generic[T]):
    """Items of one key, in arrival order; ``first_at`` is when the oldest arrived."""

    key: Hashable
    items: list[T] = field(default_factory=list)
    first_at: float = 0.0
    weight: int = 0


class MicroBatcher(Generic[T]):
    """Groups items by key; flushes a group at ``max_batch`` weight (items, unless weighed) or
    after ``max_wait_s``."""

    def __init__(
        self,
        max_batch: int,
        max_wait_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must be >= 0")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._open: dict[Hashable, Batch[T]] = {}
        self._full: list[Batch[T]] = []  # groups that reached max_batch, oldest first
        self._count = 0

    def __len__(self) -> int:
        """Items held (open and full groups)."""
        return self._count

    def add(self, key: Hashable, item: T, now: float | None = None, weight: int = 1) -> None:
        now = self._clock() if now is None else now
        batch = self._open.get(key)
        if batch is not None and batch.weight + weight > self.max_batch:
            del self._open[key]  # the item does not fit: the group runs as it is
            self._full.append(batch)
            batch = None
        if batch is None:
            batch = self._open[key] = Batch(key=key, first_at=now)
        batch.items.append(item)
        batch.weight += weight
        self._count += 1
        if batch.weight >= self.max_batch:
            del self._open[key]
            self._full.append(batch)

    def pop_ready(self, now: float | None = None) -> list[Batch[T]]:
        """Batches to run now: full ones, then those whose oldest item waited max_wait_s;
        together ordered by the age of their oldest item."""
        now = self._clock() if now is None else now
        ready = self._full
        self._full = []
        expired = [b for b in self._open.values() if now - b.first_at >= self.max_wait_s]
        for batch in expired:
            del self._open[batch.key]
        ready.extend(expired)
        ready.sort(key=lambda b: b.first_at)
        self._count -= sum(len(b.items) for b in ready)
        return ready

    def pop_all(self) -> list[Batch[T]]:
        """Everything held, oldest first (drain on shutdown)."""
        ready = self._full + list(self._open.values())
        self._full = []
        self._open = {}
        self._count = 0
        ready.sort(key=lambda b: b.first_at)
        return ready

    def next_deadline(self) -> float | None:
        """Clock time at which the next group becomes ready; None when nothing is held.
        A full group is ready now (its deadline is its first_at, already past)."""
        if self._full:
            return min(b.first_at for b in self._full)
        if not self._open:
            return None
        return min(b.first_at for b in self._open.values()) + self.max_wait_s

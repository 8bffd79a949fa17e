"""Which offsets may be committed: the at-least-once bookkeeping of DESIGN.md §4.

A record of a partition is *dispatched* when the consumer hands it to the pipeline and *acked*
when the broker has acknowledged its result or dead-letter record (acks=all). Records of one
partition finish out of order (different lines batch separately, a slow line lags a busy one),
so the committable offset of a partition is the offset after the longest prefix of dispatched
records that are all acked: a commit never passes an unfinished record.

Kafka offsets may have holes (transaction markers, compaction), so the prefix is over the
records as dispatched, in fetch order, not over consecutive integers.

The tracker is shared by the consumer thread (dispatch, commit), the producer's delivery
callbacks (ack) and the rebalance listener (wait, forget), hence one lock and a condition.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

__all__ = ["OffsetTracker"]

P = TypeVar("P", bound=Hashable)


class _PartitionLog:
    """Dispatched offsets of one partition, oldest first, and which of them are acked."""

    __slots__ = ("acked", "committed", "done_through", "generation", "order")

    def __init__(self, generation: int) -> None:
        self.generation = generation  # tells a late ack of a forgotten log from a fresh one
        self.order: deque[int] = deque()
        self.acked: set[int] = set()
        self.done_through: int | None = None  # offset after the acked prefix popped so far
        self.committed: int | None = None  # last offset handed out by committable()

    def advance(self) -> None:
        while self.order and self.order[0] in self.acked:
            offset = self.order.popleft()
            self.acked.discard(offset)
            self.done_through = offset + 1


class OffsetTracker(Generic[P]):
    """Per partition: dispatched vs acked records, and the offset safe to commit.

    Partitions are any hashable key (kafka-python's ``TopicPartition`` in the worker).
    """

    def __init__(self) -> None:
        self._logs: dict[P, _PartitionLog] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._in_flight = 0
        self._generations = 0

    def dispatch(self, partition: P, offset: int) -> int:
        """Record that ``offset`` of ``partition`` entered the pipeline (fetch order).

        Returns the partition's tracking generation; pass it to ``ack`` so that a record
        finishing after its partition was forgotten (and maybe re-assigned and re-read)
        cannot mark the re-read copy done.
        """
        with self._lock:
            log = self._logs.get(partition)
            if log is None:
                self._generations += 1
                log = self._logs[partition] = _PartitionLog(self._generations)
            if log.order and offset <= log.order[-1]:
                raise ValueError(
                    f"offset {offset} of {partition} dispatched out of order (last {log.order[-1]})"
                )
            if log.done_through is not None and offset < log.done_through:
                raise ValueError(f"offset {offset} of {partition} was already completed")
            log.order.append(offset)
            self._in_flight += 1
            return log.generation

    def ack(self, partition: P, offset: int, generation: int | None = None) -> bool:
        """Mark ``offset`` done. Returns False when the partition or offset is not tracked
        (forgotten on revoke, from an older generation, or acked twice), which is harmless."""
        with self._lock:
            log = self._logs.get(partition)
            if log is None or offset in log.acked or offset not in log.order:
                return False
            if generation is not None and generation != log.generation:
                return False
            log.acked.add(offset)
            self._in_flight -= 1
            log.advance()
            self._changed.notify_all()
            return True

    def committable(self) -> dict[P, int]:
        """Offsets to commit now: for every partition whose acked prefix grew since the last
        call, the offset after that prefix (the next record a successor must read)."""
        with self._lock:
            out: dict[P, int] = {}
            for partition, log in self._logs.items():
                if log.done_through is not None and log.done_through != log.committed:
                    out[partition] = log.done_through
            return out

    def mark_committed(self, offsets: dict[P, int]) -> None:
        """Remember what the broker accepted, so committable() only reports progress."""
        with self._lock:
            for partition, offset in offsets.items():
                log = self._logs.get(partition)
                if log is not None:
                    log.committed = offset

    def pending(self, partitions: Iterable[P] | None = None) -> int:
        """Dispatched but not yet acked records, over all partitions or the given ones."""
        with self._lock:
            if partitions is None:
                return self._in_flight
            return self._pending_locked(partitions)

    def _pending_locked(self, partitions: Iterable[P]) -> int:
        total = 0
        for partition in partitions:
            log = self._logs.get(partition)
            if log is not None:
                total += len(log.order) - len(log.acked)
        return total

    def wait_idle(self, partitions: Iterable[P] | None, timeout_s: float) -> bool:
        """Block until the given partitions (or all) have nothing pending; False on timeout."""
        parts = None if partitions is None else list(partitions)
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                left = self._in_flight if parts is None else self._pending_locked(parts)
                if left == 0:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.5))

    def forget(self, partition: P) -> None:
        """Drop a revoked or lost partition; its late acks are then ignored."""
        with self._lock:
            log = self._logs.pop(partition, None)
            if log is not None:
                self._in_flight -= len(log.order) - len(log.acked)
                self._changed.notify_all()

    def generation(self, partition: P) -> int | None:
        """The partition's current tracking generation (None when not tracked)."""
        with self._lock:
            log = self._logs.get(partition)
            return None if log is None else log.generation

    def partitions(self) -> list[P]:
        with self._lock:
            return list(self._logs)

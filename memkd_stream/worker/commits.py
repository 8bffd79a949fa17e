"""Offset commits: only the contiguous acked prefix of each partition (DESIGN.md §4).

``OffsetTracker.committable()`` gives, per partition, the offset after the longest prefix of
records whose result or dead letter the broker has acked; a commit never passes an unfinished
record, however out of order the lines finish. Only partitions still assigned are committed.
A refused commit is retried next round; ``failing_for_s`` tells the consumer loop how long
commits have been refused while something was owed (``kafka.commit_stall_timeout_s``). The
drain's last commit has no next round, so it rejoins a rebalancing group first
(``commit_before_exit``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kafka import TopicPartition
from kafka.errors import CommitFailedError, RebalanceInProgressError
from kafka.structs import OffsetAndMetadata

from memkd_stream.worker.context import WorkerContext

__all__ = ["OffsetCommitter", "Offsets"]

Offsets = dict[TopicPartition, OffsetAndMetadata]


class OffsetCommitter:
    """Commits the acked prefix; used by the consumer thread and the revoke callback."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self._failing_since: float | None = None  # monotonic time of the first refusal
        self.last_error = ""
        self.last_exception: Exception | None = None

    def commit(self, timeout_ms: int = 5000) -> bool:
        """Blocking commit of the assigned partitions (consumer thread only; never on the
        consumer's IO thread, where kafka-python 3 forbids the blocking ``commit()``).

        Returns False when the broker or the client refused it (``last_exception`` says why).
        """
        offsets = self.committable()
        if not offsets:
            self._failing_since = None  # nothing owed: nothing at risk
            return True
        try:
            self.ctx.state.kafka_consumer.commit(offsets, timeout_ms=timeout_ms)
        except Exception as exc:
            self.ctx.log.warning("offset commit failed; retrying next round", error=str(exc))
            # A class name: a small fixed set, so a bounded label.
            self.ctx.metrics.commit_failed(type(exc).__name__)
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.last_exception = exc
            if self._failing_since is None:
                self._failing_since = time.monotonic()
            return False
        self.mark_committed(offsets)
        return True

    def commit_before_exit(
        self, budget_s: float, between_tries: Callable[[], None] = lambda: None
    ) -> bool:
        """The drain's last commit, retried through a rebalance that is under way.

        While the member is rejoining (another worker joined, or the topic's partitions
        changed, just as we were told to stop) every commit is refused until the rejoin
        completes, and only ``poll()`` completes it. So poll, with every partition paused so
        that no new records arrive (any from partitions the rejoin hands us are dropped
        uncommitted), and commit again, within ``budget_s``. Without this the drained results
        stay uncommitted and the next owner answers them a second time. Other refusals (a dead
        broker) are not retried: the next owner re-reads from the last commit, as always.
        ``between_tries`` runs before each poll (the worker repairs a stranded join there).
        """
        deadline = time.monotonic() + budget_s
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if self.commit(timeout_ms=max(500, min(2000, left_ms))):
                return True
            rejoining = isinstance(
                self.last_exception, RebalanceInProgressError | CommitFailedError
            )
            if not rejoining or time.monotonic() >= deadline:
                return False
            between_tries()
            consumer = self.ctx.state.kafka_consumer
            try:
                consumer.pause(*consumer.assignment())
                consumer.poll(timeout_ms=200)
            except Exception as exc:  # the drain must reach its close whatever poll raises
                self.ctx.log.warning("poll to finish the rejoin failed", error=str(exc))

    def failing_for_s(self) -> float:
        """Seconds since commits started being refused with results owed (0: they are not)."""
        since = self._failing_since
        return 0.0 if since is None else time.monotonic() - since

    def committable(self, only: set[TopicPartition] | None = None) -> Offsets:
        assigned = set(self.ctx.state.kafka_consumer.assignment()) if only is None else only
        return {
            tp: OffsetAndMetadata(offset, "", -1)
            for tp, offset in self.ctx.tracker.committable().items()
            if tp in assigned
        }

    def mark_committed(self, offsets: Offsets) -> None:
        self.ctx.tracker.mark_committed({tp: om.offset for tp, om in offsets.items()})
        self.ctx.metrics.committed()
        self._failing_since = None

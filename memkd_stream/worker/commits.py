"""Offset commits: only the contiguous acked prefix of each partition (DESIGN.md §4).

``OffsetTracker.committable()`` gives, per partition, the offset after the longest prefix of
records whose result or dead letter the broker has acked; a commit never passes an unfinished
record, however out of order the lines finish. Only partitions still assigned are committed.
A refused commit is retried next round; ``failing_for_s`` tells the consumer loop how long
commits have been refused while something was owed (``kafka.commit_stall_timeout_s``).
"""

from __future__ import annotations

import time

from kafka import TopicPartition
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

    def commit(self, timeout_ms: int = 5000) -> None:
        """Blocking commit of the assigned partitions (consumer thread only; never on the
        consumer's IO thread, where kafka-python 3 forbids the blocking ``commit()``)."""
        offsets = self.committable()
        if not offsets:
            self._failing_since = None  # nothing owed: nothing at risk
            return
        try:
            self.ctx.state.kafka_consumer.commit(offsets, timeout_ms=timeout_ms)
        except Exception as exc:
            self.ctx.log.warning("offset commit failed; retrying next round", error=str(exc))
            # A class name: a small fixed set, so a bounded label.
            self.ctx.metrics.commit_failed(type(exc).__name__)
            self.last_error = f"{type(exc).__name__}: {exc}"
            if self._failing_since is None:
                self._failing_since = time.monotonic()
            return
        self.mark_committed(offsets)

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

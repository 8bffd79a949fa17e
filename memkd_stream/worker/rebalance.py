"""Partition ownership changes: finish or abandon revoked work, commit it, forget it.

kafka-python 3.x runs these callbacks as coroutines on the consumer's IO loop while ``poll()``
waits, so the consumer thread is blocked meanwhile; the pipeline threads are not, and keep
finishing the revoked partitions' in-flight records. Revoke budget: we wait at most
``worker.rebalance_budget_s`` for them; whatever is not finished by then is abandoned,
uncommitted, for the next owner (a duplicate at worst, never a gap: DESIGN.md §4).

The wait yields to the IO loop every few milliseconds instead of blocking it: heartbeats run on
that loop, and with a session timeout of a few seconds (fast failover) a blocked loop would get
the member evicted in the middle of its own revoke. The loop's sleep is kafka-python 3.0's
``KafkaConsumer._net.sleep``; without it the wait blocks (and must then stay well below the
session timeout).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from kafka import AsyncConsumerRebalanceListener, TopicPartition

from memkd_stream.worker.commits import OffsetCommitter, Offsets
from memkd_stream.worker.context import WorkerContext
from memkd_stream.worker.flow_control import FlowControl
from memkd_stream.worker.work_item import partition_names

__all__ = ["RebalanceHandler"]

# How often the revoke wait looks at the revoked partitions' in-flight records.
_YIELD_S = 0.02


def _loop_sleep(consumer: Any) -> Callable[[float], Awaitable[None]] | None:
    """kafka-python 3.0's sleep on the consumer's IO loop, if this client has one."""
    sleep = getattr(getattr(consumer, "_net", None), "sleep", None)
    return sleep if callable(sleep) else None


class RebalanceHandler(AsyncConsumerRebalanceListener):
    """Runs on the consumer's IO thread while ``poll()`` waits (kafka-python 3.x).

    Revoke: wait (bounded) for the revoked partitions' in-flight records, then commit their
    acked prefix with an awaited async commit (the blocking ``commit()`` is forbidden on the IO
    thread), then forget them. Heartbeats pause while we wait; the budget is far below
    ``session.timeout.ms`` (45 s), so the member is not evicted for it.
    """

    def __init__(
        self,
        ctx: WorkerContext,
        committer: OffsetCommitter,
        flow: FlowControl,
        positions: dict[TopicPartition, int],
    ) -> None:
        self.ctx = ctx
        self.committer = committer
        self.flow = flow
        self.positions = positions  # the consumer loop's next offsets (lag gauges)

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        offsets = await self.finish_revoked(set(revoked))
        if offsets:
            try:
                await self.ctx.state.kafka_consumer.commit_async(offsets)
                self.committer.mark_committed(offsets)
            except Exception as exc:
                self.ctx.log.warning(
                    "commit on revoke failed; the next owner re-reads from the last commit",
                    error=str(exc),
                )

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.on_assigned(set(assigned))

    async def on_partitions_lost(self, lost: Iterable[TopicPartition]) -> None:
        self.forget(set(lost), reason="lost")

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        self.ctx.metrics.partitions_assigned.set(len(self.ctx.state.kafka_consumer.assignment()))
        self.ctx.log.info("partitions assigned", partitions=partition_names(assigned))

    async def finish_revoked(self, revoked: set[TopicPartition]) -> Offsets:
        """Finish (or abandon after the budget) the revoked partitions' in-flight records and
        return their committable offsets; they are forgotten afterwards."""
        state = self.ctx.state
        if state.closing:
            # closing: the pipeline has stopped, nothing more will finish; commit what is acked
            # now (a rejoin during the drain's last commit lands here); after a fatal error
            # nothing more is committed (the broker is likely gone; the close must not wait)
            offsets = {} if state.fatal else self.committer.committable(only=revoked)
            self.forget(revoked, reason="closed")
            return offsets
        with self.flow.lock:
            # Parked records wait for a line that may stay down longer than the budget: abandon
            # them now; the next owner retries them from the last commit.
            waiting = {tp for tp in revoked if tp not in self.flow.parked}
        tracker = self.ctx.tracker
        done = await self._wait_idle(waiting, self.ctx.worker.rebalance_budget_s)
        offsets = self.committer.committable(only=revoked)
        self.ctx.log.info(
            "partitions revoked",
            partitions=partition_names(revoked),
            finished=done,
            abandoned=tracker.pending(revoked),
            commit={f"{tp.topic}:{tp.partition}": om.offset for tp, om in offsets.items()},
        )
        self.forget(revoked, reason="revoked")
        return offsets

    async def _wait_idle(self, partitions: set[TopicPartition], budget_s: float) -> bool:
        """Until the partitions have nothing in flight or the budget is spent; True if idle."""
        sleep = _loop_sleep(self.ctx.state.kafka_consumer)
        if sleep is None:
            return self.ctx.tracker.wait_idle(partitions, budget_s)
        deadline = time.monotonic() + budget_s
        while not self.ctx.tracker.wait_idle(partitions, 0):
            if time.monotonic() >= deadline:
                return False
            await sleep(_YIELD_S)
        return True

    def forget(self, tps: set[TopicPartition], *, reason: str) -> None:
        """Drop every trace of the partitions; late results of theirs are then not sent."""
        ctx = self.ctx
        with self.flow.lock:
            for tp in tps:
                self.flow.forget(tp)
                self.positions.pop(tp, None)
                ctx.tracker.forget(tp)
                ctx.metrics.drop_lag(tp.topic, tp.partition)
        if reason == "lost":
            ctx.log.warning(
                "partitions lost (evicted from the group)", partitions=partition_names(tps)
            )
        with contextlib.suppress(Exception):
            assigned = set(ctx.state.kafka_consumer.assignment())
            ctx.metrics.partitions_assigned.set(len(assigned - tps))

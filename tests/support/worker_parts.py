"""A ``Worker`` without a broker: a fake consumer that records pauses, and tracked work items.

The worker's bookkeeping (revoke within budget, backpressure, parked records) is pure logic over
the consumer's ``assignment``/``pause``/``resume``; unit tests drive it through this fake.
"""

from __future__ import annotations

from kafka import TopicPartition

from memkd_stream.worker.app import Worker
from memkd_stream.worker.work_item import WorkItem

__all__ = ["TP0", "TP1", "FakeConsumer", "tracked_item"]

TP0 = TopicPartition("in", 0)
TP1 = TopicPartition("in", 1)


class FakeConsumer:
    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = set(assigned)
        self.paused: set[TopicPartition] = set()

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def pause(self, *tps: TopicPartition) -> None:
        assert set(tps) <= self.assigned
        self.paused |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused -= set(tps)


def tracked_item(w: Worker, tp: TopicPartition, offset: int) -> WorkItem:
    """A work item dispatched to ``w``'s offset tracker, as the consumer loop would."""
    generation = w.tracker.dispatch(tp, offset)
    return WorkItem(tp=tp, generation=generation, offset=offset, key=b"A", value=b"x", headers=[])

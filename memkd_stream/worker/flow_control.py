"""Which partitions the consumer pauses, and the records parked behind an unavailable line.

- **backpressure**: with ``worker.queue_max_records`` records in flight (a tiled frame's
  decoded tiles each count, ``tiles``) every assigned partition is paused; polling resumes once
  in-flight work drops to half of that, so memory stays bounded whatever the broker holds.
- **parked records**: a record whose line model cannot be loaded now is parked and its
  partition paused (records of a line share a partition and stay in order); it is retried every
  ``_PARK_RETRY_S`` through the decode pool until its line loads or its pause budget runs out.
- **draining**: every assigned partition is paused.

Consumer thread only (``handle_control``, ``update_pauses``), except ``lock``-guarded state that
the rebalance callbacks forget. ``lock`` is reentrant: ``rebalance`` holds it while it forgets
a partition everywhere at once.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter as CounterDict

from kafka import TopicPartition

from memkd_stream.worker.context import WorkerContext
from memkd_stream.worker.pipeline import Pipeline
from memkd_stream.worker.work_item import WorkItem, is_current

__all__ = ["FlowControl"]

# A parked (line-unavailable) record is retried this often until its pause budget runs out.
_PARK_RETRY_S = 1.0


class FlowControl:
    """Pauses/resumes partitions for backpressure, parked records and draining."""

    def __init__(self, ctx: WorkerContext, pipeline: Pipeline) -> None:
        self.ctx = ctx
        self.pipeline = pipeline
        self.lock = threading.RLock()
        # partition state (guarded by lock): parked records and retries in the decode pool
        self.parked: dict[TopicPartition, list[tuple[float, WorkItem]]] = {}
        self.retrying: CounterDict[TopicPartition] = CounterDict()
        self.paused: set[TopicPartition] = set()
        self.backpressure = False
        high = ctx.worker.queue_max_records
        self.high_water = max(1, high)
        self.low_water = max(0, high // 2)

    def blocked(self) -> set[TopicPartition]:
        """Partitions holding parked records or records being retried."""
        with self.lock:
            return set(self.parked) | set(self.retrying)

    def handle_control(self) -> None:
        """Take the decode pool's park/retry reports and resubmit parked records now due."""
        now = time.monotonic()
        while True:
            try:
                kind, item = self.pipeline.control_q.get_nowait()
            except queue.Empty:
                break
            with self.lock:
                if kind == "park":
                    if not is_current(self.ctx.tracker, item):
                        continue
                    self.parked.setdefault(item.tp, []).append((now + _PARK_RETRY_S, item))
                elif kind == "retry_done":
                    self.retrying[item.tp] -= 1
                    if self.retrying[item.tp] <= 0:
                        del self.retrying[item.tp]
        with self.lock:
            for tp in list(self.parked):
                due = [it for at, it in self.parked[tp] if at <= now]
                if not due:
                    continue
                self.parked[tp] = [(at, it) for at, it in self.parked[tp] if at > now]
                if not self.parked[tp]:
                    del self.parked[tp]
                for it in due:
                    it.retry = True
                    self.retrying[tp] += 1
                    self.pipeline.submit(it)

    def update_pauses(self) -> None:
        consumer = self.ctx.state.kafka_consumer
        assigned = set(consumer.assignment())
        # records in flight, a tiled frame counting its tiles (worker.tiles)
        pending = self.ctx.tracker.pending() + self.pipeline.tiles.extra
        if not self.backpressure and pending >= self.high_water:
            self.backpressure = True
            self.ctx.log.info("backpressure: pausing all partitions", in_flight=pending)
        elif self.backpressure and pending <= self.low_water:
            self.backpressure = False
            self.ctx.log.info("backpressure released", in_flight=pending)
        blocked = self.blocked()
        draining = self.ctx.state.draining.is_set()
        want = set(assigned) if (self.backpressure or draining) else blocked
        want &= assigned
        to_pause = want - self.paused
        to_resume = (self.paused & assigned) - want
        if to_pause:
            consumer.pause(*to_pause)
        if to_resume:
            consumer.resume(*to_resume)
        self.paused = want
        self.ctx.metrics.paused.set(len(want))

    def forget(self, tp: TopicPartition) -> None:
        """Drop a revoked/lost partition's parked records and pause state (hold ``lock``)."""
        for _, item in self.parked.pop(tp, []):
            if item.request is not None:
                self.pipeline.line_abandoned(item.request.line)
        self.retrying.pop(tp, None)
        self.paused.discard(tp)

"""The consumer thread: poll, parse, dispatch, pause, commit, probe the broker.

It is the only user of the ``KafkaConsumer`` (apart from the rebalance callbacks kafka-python
runs inside its ``poll()``). Each record is registered with the ``OffsetTracker`` in fetch
order before it enters the pipeline, which is what makes the committed prefix correct.
Broker unreachable longer than ``kafka.unreachable_timeout_s`` -> the run turns fatal (exit
code 3) so that Kubernetes restarts the worker; nothing unacked is committed meanwhile.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from kafka import TopicPartition
from kafka.errors import KafkaError

from memkd_stream.contract import wire
from memkd_stream.worker.commits import OffsetCommitter
from memkd_stream.worker.flow_control import FlowControl
from memkd_stream.worker.health import Heartbeats
from memkd_stream.worker.offsets import OffsetTracker
from memkd_stream.worker.pipeline import Pipeline
from memkd_stream.worker.run_state import EXIT_BROKER_UNREACHABLE, RunState
from memkd_stream.worker.sink import ResultSink
from memkd_stream.worker.work_item import WorkItem

__all__ = ["COMMIT_INTERVAL_S", "PROBE_INTERVAL_S", "ConsumerLoop"]

# Commit the acked prefix this often; a crash re-delivers at most this much finished work.
COMMIT_INTERVAL_S = 1.0
# Broker liveness probe (ListOffsets) period and timeout; also refreshes the lag gauges.
PROBE_INTERVAL_S = 2.0
_PROBE_TIMEOUT_MS = 2000
_POLL_TIMEOUT_MS = 100


class ConsumerLoop:
    """Polls until stopped or fatal; owns the consumer positions and the broker probe."""

    def __init__(
        self,
        kafka: Any,
        tracker: OffsetTracker,
        metrics: Any,
        heartbeats: Heartbeats,
        state: RunState,
        flow: FlowControl,
        pipeline: Pipeline,
        sink: ResultSink,
        committer: OffsetCommitter,
        log: Any,
    ) -> None:
        self.kafka = kafka
        self.tracker = tracker
        self.metrics = metrics
        self.heartbeats = heartbeats
        self.state = state
        self.flow = flow
        self.pipeline = pipeline
        self.sink = sink
        self.committer = committer
        self.log = log
        self.next_offset: dict[TopicPartition, int] = {}
        self.broker_ok = False
        self.broker_ok_at = time.monotonic()

    def run(self) -> None:
        last_commit = last_probe = time.monotonic()
        while not self.state.stop.is_set() and self.state.fatal is None:
            self.heartbeats.beat("consumer")
            self.flow.handle_control()
            self.flow.update_pauses()
            try:
                batch = self.state.consumer.poll(timeout_ms=_POLL_TIMEOUT_MS)
            except KafkaError as exc:  # e.g. a rebalance callback failed; the group recovers
                self.log.warning("poll failed; continuing", error=str(exc))
                batch = {}
            for tp, records in batch.items():
                for record in records:
                    self.accept(tp, record)
            now = time.monotonic()
            if now - last_commit >= COMMIT_INTERVAL_S:
                self.committer.commit()
                last_commit = now
            if now - last_probe >= PROBE_INTERVAL_S:
                self.probe_broker()
                last_probe = time.monotonic()
            self.metrics.in_flight.set(self.tracker.pending())

    def accept(self, tp: TopicPartition, record: Any) -> None:
        generation = self.tracker.dispatch(tp, record.offset)
        self.next_offset[tp] = record.offset + 1
        self.metrics.record_in()
        headers = [(k, v) for k, v in (record.headers or [])]
        item = WorkItem(
            tp=tp,
            generation=generation,
            offset=record.offset,
            key=record.key,
            value=record.value,
            headers=headers,
            received_mono=time.monotonic(),
        )
        try:
            item.request = wire.parse_request(
                tp.topic, tp.partition, record.offset, record.key, record.value, headers
            )
        except wire.BadRequest as exc:
            self.sink.dead_letter(item, exc.code, exc.detail, offset=record.offset)
            return
        self.pipeline.submit(item)

    def mark_broker_reachable(self) -> None:
        self.broker_ok = True
        self.broker_ok_at = time.monotonic()
        self.metrics.broker_reachable.set(1)

    def probe_broker(self) -> None:
        """ListOffsets on the assigned partitions (a real broker round trip, and the lag
        gauges); with none assigned, a TCP connect to a bootstrap server, so that a missing
        topic is not mistaken for a dead broker."""
        consumer = self.state.consumer
        assigned = sorted(consumer.assignment())
        ends: dict[Any, int] = {}
        try:
            if assigned:
                ends = consumer.end_offsets(assigned, timeout_ms=_PROBE_TIMEOUT_MS)
            else:
                _connect_any(self.kafka.bootstrap_servers, _PROBE_TIMEOUT_MS / 1000)
        except Exception as exc:
            down_s = time.monotonic() - self.broker_ok_at
            if self.broker_ok:
                self.log.warning("Kafka broker unreachable; retrying", error=str(exc))
            self.broker_ok = False
            self.metrics.broker_reachable.set(0)
            if down_s > float(self.kafka.unreachable_timeout_s):
                self.state.fatal = (
                    f"Kafka broker {self.kafka.bootstrap_servers} unreachable for "
                    f"{down_s:.0f}s (limit kafka.unreachable_timeout_s="
                    f"{self.kafka.unreachable_timeout_s}); exiting so the worker is restarted"
                )
                self.state.exit_code = EXIT_BROKER_UNREACHABLE
            return
        if not self.broker_ok:
            self.log.info("Kafka broker reachable again")
        self.mark_broker_reachable()
        for tp in assigned:
            position = self.next_offset.get(tp)
            if position is not None and ends.get(tp) is not None:
                self.metrics.lag(tp.topic, tp.partition, max(0, ends[tp] - position))


def _connect_any(bootstrap: str | list[str], timeout_s: float) -> None:
    """Open (and close) a TCP connection to the first bootstrap server that accepts one."""
    servers = bootstrap.split(",") if isinstance(bootstrap, str) else list(bootstrap)
    error: OSError | None = None
    for server in servers:
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout_s):
                return
        except OSError as exc:
            error = exc
    raise error or OSError("no bootstrap servers configured")

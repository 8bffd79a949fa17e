"""The consumer thread: poll, parse, dispatch, pause, commit, probe the broker.

It is the only user of the ``KafkaConsumer`` (apart from the rebalance callbacks kafka-python
runs inside its ``poll()``). Each record is registered with the ``OffsetTracker`` in fetch
order before it enters the pipeline, which is what makes the committed prefix correct.
Broker unreachable longer than ``kafka.unreachable_timeout_s``, or offset commits refused
longer than ``kafka.commit_stall_timeout_s`` -> the run turns fatal (exit code 3) so that
Kubernetes restarts the worker; nothing unacked is committed meanwhile.
"""

from __future__ import annotations

import contextlib
import time

from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from memkd_stream.broker.probe import tcp_connect
from memkd_stream.broker.stranded_join import StrandedJoinRepair
from memkd_stream.contract.codes import DeadLetterCode
from memkd_stream.contract.errors import BadRequest
from memkd_stream.contract.request import parse_request
from memkd_stream.errors import ExitCode
from memkd_stream.worker.commits import OffsetCommitter
from memkd_stream.worker.context import WorkerContext
from memkd_stream.worker.flow_control import FlowControl
from memkd_stream.worker.pipeline import Pipeline
from memkd_stream.worker.sink import ResultSink
from memkd_stream.worker.unreadable import UnreadableRecords, is_unreadable_record
from memkd_stream.worker.work_item import WorkItem, log_fields

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
        ctx: WorkerContext,
        flow: FlowControl,
        pipeline: Pipeline,
        sink: ResultSink,
        committer: OffsetCommitter,
    ) -> None:
        self.ctx = ctx
        self.flow = flow
        self.pipeline = pipeline
        self.sink = sink
        self.committer = committer
        self.next_offset: dict[TopicPartition, int] = {}
        self.unreadable = UnreadableRecords(ctx, sink, self.next_offset)
        self.broker_ok = False
        self.broker_ok_at = time.monotonic()
        self.stranded_join = StrandedJoinRepair()

    def run(self) -> None:
        state = self.ctx.state
        last_commit = last_probe = time.monotonic()
        while not state.stop.is_set() and state.fatal is None:
            self.ctx.heartbeats.beat("consumer")
            self.flow.handle_control()
            self.flow.update_pauses()
            try:
                batch = state.kafka_consumer.poll(timeout_ms=_POLL_TIMEOUT_MS)
            except Exception as exc:
                batch = {}
                if not is_unreadable_record(exc):  # e.g. a rebalance callback failed
                    self.ctx.log.warning("poll failed; continuing", error=str(exc))
                elif not self.unreadable.skip(exc):
                    state.fail(
                        f"a fetched record cannot be parsed and its partition cannot be told "
                        f"({type(exc).__name__}: {exc}); stopping rather than spinning on it",
                        ExitCode.FAILED,
                    )
            for tp, records in batch.items():
                for record in records:
                    self.accept(tp, record)
            now = time.monotonic()
            if now - last_commit >= COMMIT_INTERVAL_S:
                self.repair_stranded_join()
                self.observe_generation()
                self.committer.commit()
                self.check_commit_stall()
                last_commit = now
            if now - last_probe >= PROBE_INTERVAL_S:
                self.probe_broker()
                last_probe = time.monotonic()
            self.ctx.metrics.in_flight.set(self.ctx.tracker.pending())

    def accept(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        generation = self.ctx.tracker.dispatch(tp, record.offset)
        self.next_offset[tp] = record.offset + 1
        self.ctx.metrics.record_in()
        headers = [(k, v) for k, v in (record.headers or [])]
        item = WorkItem(
            tp=tp,
            generation=generation,
            offset=record.offset,
            key=record.key,
            value=record.value,
            headers=headers,
        )
        try:
            request = parse_request(
                tp.topic,
                tp.partition,
                record.offset,
                record.key,
                record.value,
                headers,
                timestamp_ms=record.timestamp,
            )
        except BadRequest as exc:
            self.sink.dead_letter(item, DeadLetterCode(exc.code), str(exc), offset=record.offset)
            return
        item.request = request
        self.ctx.metrics.line_record_in(request.line)
        for name in request.ignored_headers:
            self.ctx.metrics.header_ignored(name)
            self.ctx.log.warning(
                "optional header malformed or repeated: passed through and ignored",
                header=name,
                **log_fields(item),
            )
        self.pipeline.submit(item)

    def repair_stranded_join(self) -> None:
        """A consumer stuck in a rebalance nothing will finish (``StrandedJoinRepair``):
        rejoin, so commits and heartbeats resume."""
        if self.stranded_join.check(self.ctx.state.kafka_consumer):
            self.ctx.metrics.stranded_rejoins.inc()
            self.ctx.log.warning(
                "consumer stuck in a rebalance that will not finish (kafka-python 3.0); "
                "rejoining the group"
            )

    def observe_generation(self) -> None:
        """Export the group generation (kafka-python 3's ``group_metadata()``; other clients
        leave the gauge alone)."""
        with contextlib.suppress(Exception):
            metadata = self.ctx.state.kafka_consumer.group_metadata()
            self.ctx.metrics.group_generation.set(max(0, metadata.generation_id))

    def check_commit_stall(self) -> None:
        """Commits refused past ``kafka.commit_stall_timeout_s``: a group membership that will
        not heal by polling (results flow, nothing is committed). Fatal, so that a restart
        rejoins; what was not committed is re-delivered, never lost."""
        limit = self.ctx.kafka.commit_stall_timeout_s
        stalled = self.committer.failing_for_s()
        if stalled > limit:
            self.ctx.state.fail(
                f"offset commits refused for {stalled:.0f}s (limit "
                f"kafka.commit_stall_timeout_s={limit:g}; last error: "
                f"{self.committer.last_error}); exiting so that a restart rejoins the group",
                ExitCode.BROKER_UNREACHABLE,
            )

    def mark_broker_reachable(self) -> None:
        self.broker_ok = True
        self.broker_ok_at = time.monotonic()
        self.ctx.metrics.broker_reachable.set(1)

    def probe_broker(self) -> None:
        """ListOffsets on the assigned partitions (a real broker round trip, and the lag
        gauges); with none assigned, a TCP connect to a bootstrap server, so that a missing
        topic is not mistaken for a dead broker."""
        ctx = self.ctx
        kafka = ctx.kafka
        consumer = ctx.state.kafka_consumer
        assigned = sorted(consumer.assignment())
        ends: dict[TopicPartition, int] = {}
        try:
            if assigned:
                ends = consumer.end_offsets(assigned, timeout_ms=_PROBE_TIMEOUT_MS)
            else:
                tcp_connect(kafka.bootstrap_servers, _PROBE_TIMEOUT_MS / 1000)
        except Exception as exc:
            down_s = time.monotonic() - self.broker_ok_at
            if self.broker_ok:
                ctx.log.warning("Kafka broker unreachable; retrying", error=str(exc))
            self.broker_ok = False
            ctx.metrics.broker_reachable.set(0)
            if down_s > kafka.unreachable_timeout_s:
                ctx.state.fail(
                    f"Kafka broker {kafka.bootstrap_servers} unreachable for {down_s:.0f}s "
                    f"(limit kafka.unreachable_timeout_s={kafka.unreachable_timeout_s}); "
                    "exiting so the worker is restarted",
                    ExitCode.BROKER_UNREACHABLE,
                )
            return
        if not self.broker_ok:
            ctx.log.info("Kafka broker reachable again")
        self.mark_broker_reachable()
        for tp in assigned:
            position = self.next_offset.get(tp)
            if position is not None and ends.get(tp) is not None:
                ctx.metrics.lag(tp.topic, tp.partition, max(0, ends[tp] - position))

"""The worker facade: wires the parts of ``memkd_stream.worker`` together, runs the consumer
loop, and drains (SIGTERM) or aborts (fatal error) at the end. The package docstring tells the
threads and failure paths."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from kafka import TopicPartition

from memkd_stream.broker.clients import make_consumer, make_producer
from memkd_stream.broker.errors import KafkaRefused, connect_failure
from memkd_stream.errors import ExitCode
from memkd_stream.log import get_logger
from memkd_stream.settings import Settings
from memkd_stream.worker.commits import OffsetCommitter
from memkd_stream.worker.consumer_loop import ConsumerLoop
from memkd_stream.worker.context import WorkerContext
from memkd_stream.worker.decode import ImageDecoder
from memkd_stream.worker.engine import Engine
from memkd_stream.worker.flow_control import FlowControl
from memkd_stream.worker.health import Heartbeats
from memkd_stream.worker.metrics import WorkerMetrics
from memkd_stream.worker.offsets import OffsetTracker
from memkd_stream.worker.pipeline import Pipeline
from memkd_stream.worker.rebalance import RebalanceHandler
from memkd_stream.worker.run_state import RunState
from memkd_stream.worker.sink import ResultSink

__all__ = ["Worker"]

# Margin kept from drain_grace_s for flush, commit and close after the drain wait.
_CLOSE_MARGIN_S = 3.0
# After a fatal error: time to leave the group and close, not to flush (nothing is committed).
_ABORT_CLOSE_S = 2.0


class Worker:
    """One worker process's pipeline. ``run()`` blocks and returns the exit code."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        metrics: WorkerMetrics | None = None,
        heartbeats: Heartbeats | None = None,
        consumer_overrides: dict[str, Any] | None = None,
    ) -> None:
        tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self.ctx = ctx = WorkerContext(
            settings=settings,
            metrics=metrics or WorkerMetrics(),
            tracker=tracker,
            state=RunState(),
            heartbeats=heartbeats or Heartbeats(),
            log=get_logger("memkd_stream.worker"),
        )
        self.engine = engine
        self._consumer_overrides = consumer_overrides or {}
        self.sink = ResultSink(ctx)
        self.pipeline = Pipeline(ctx, engine, ImageDecoder(ctx.worker.max_image_pixels), self.sink)
        self.flow = FlowControl(ctx, self.pipeline)
        self.committer = OffsetCommitter(ctx)
        self.consumer_loop = ConsumerLoop(ctx, self.flow, self.pipeline, self.sink, self.committer)
        self.rebalance = RebalanceHandler(
            ctx, self.committer, self.flow, self.consumer_loop.next_offset
        )

    @property
    def state(self) -> RunState:
        return self.ctx.state

    @property
    def tracker(self) -> OffsetTracker[TopicPartition]:
        return self.ctx.tracker

    # ------------------------------------------------------------------ public surface
    def stop(self) -> None:
        """Ask the worker to drain and exit (safe from a signal handler)."""
        self.state.stop.set()

    def ready_checks(self) -> dict[str, bool]:
        """Readiness of DESIGN.md §6: teachers loaded and broker reachable."""
        return {
            "teachers_loaded": bool(self.engine.teachers_loaded),
            "broker_reachable": self.consumer_loop.broker_ok,
        }

    def run(self) -> ExitCode:
        """Consume until stopped; returns the process exit code."""
        ctx, state = self.ctx, self.state
        try:
            self._start_clients()
        except Exception as exc:
            self.pipeline.shutdown()
            failure = connect_failure(
                ctx.kafka.bootstrap_servers, ctx.kafka.unreachable_timeout_s, exc
            )
            if isinstance(failure, KafkaRefused):  # a restart cannot help: fix the settings
                ctx.log.error(str(failure), code=failure.code)
                return ExitCode.USAGE
            ctx.log.error(
                "Kafka broker unreachable at start; exiting so the worker is restarted",
                bootstrap=ctx.kafka.bootstrap_servers,
                error=str(exc),
            )
            return ExitCode.BROKER_UNREACHABLE
        ws = ctx.worker
        # the consumer thread waits in poll() for a revoke's budget, and drains for its grace
        stale = max(ws.stuck_after_s, ws.rebalance_budget_s + 5, ws.drain_grace_s)
        for loop in ("consumer", "inference", "publisher"):  # watched from now on
            ctx.heartbeats.register(loop, stale)
        self.pipeline.start()
        ctx.log.info(
            "worker consuming",
            topic=ctx.kafka.inspect_topic,
            group=ctx.kafka.group_id,
            worker=ctx.worker_id,
        )
        try:
            self.consumer_loop.run()
        except Exception as exc:  # a bug in the loop must not look like a clean exit
            ctx.log.exception("consumer loop crashed", error=str(exc))
            state.fail(f"consumer loop crashed: {exc}", ExitCode.FAILED)
        if state.fatal is None:
            self._drain()
        else:
            self._abort()
        return state.exit_code

    # ------------------------------------------------------------------ setup
    def _start_clients(self) -> None:
        kafka = self.ctx.kafka
        client_id = f"{kafka.client_id}-{self.ctx.worker_id}"
        self.state.producer = make_producer(kafka, client_id=client_id)
        overrides = {
            "bootstrap_timeout_ms": int(kafka.unreachable_timeout_s * 1000),
            **self._consumer_overrides,
        }
        consumer = self.state.consumer = make_consumer(
            kafka,
            client_id=client_id,
            max_poll_records=max(1, self.ctx.worker.queue_max_records // 4),
            **overrides,
        )
        # Subscribe first, then fetch metadata: the order matters (see _await_topic_metadata).
        consumer.subscribe([kafka.inspect_topic], listener=self.rebalance)
        self._await_topic_metadata(kafka.inspect_topic)
        self.consumer_loop.mark_broker_reachable()

    def _await_topic_metadata(self, topic: str, timeout_s: float = 10.0) -> None:
        """Know the inspect topic's partitions before the first poll joins the group.

        The group leader assigns from its coordinator's snapshot of the subscribed topics'
        partitions, and kafka-python rebuilds that snapshot only when a metadata response
        arrives *while subscribed*. Joining before the snapshot knows a (just created) topic
        yields an empty assignment, revisited only at the next metadata refresh (a worker idle
        for minutes); and a snapshot that changes right after the first join (a metadata fetch
        made before ``subscribe``) forces a second rebalance within a second of the first, so a
        SIGTERM then finds the member rejoining and its drain commit refused. ``topics()`` always
        asks the broker, so after ``subscribe`` it rebuilds the snapshot before the first join.
        """
        consumer = self.state.kafka_consumer
        deadline = time.monotonic() + timeout_s
        while topic not in consumer.topics() or not consumer.partitions_for_topic(topic):
            if time.monotonic() >= deadline:
                self.ctx.log.warning(
                    "inspect topic has no partitions yet; create it with 'memkd-stream topics "
                    "create' (consuming starts when it appears)",
                    topic=topic,
                )
                return
            time.sleep(0.5)

    # ------------------------------------------------------------------ shutdown
    def _drain(self) -> None:
        state, log = self.state, self.ctx.log
        grace = self.ctx.worker.drain_grace_s
        started = time.monotonic()
        log.info("draining: polling stopped", in_flight=self.tracker.pending())
        state.draining.set()
        with contextlib.suppress(Exception):
            self.flow.update_pauses()
        # Parked records would wait for their line; they stay uncommitted for the next owner.
        waiting = set(self.tracker.partitions()) - self.flow.blocked()
        wait_s = max(0.0, grace - _CLOSE_MARGIN_S)
        while time.monotonic() - started < wait_s and state.fatal is None:
            self.flow.handle_control()
            if self.tracker.wait_idle(waiting, 0.2):
                break
        self.pipeline.shutdown()
        self.sink.close()
        if state.producer is not None:
            try:
                state.producer.flush(timeout=max(0.5, grace - (time.monotonic() - started) - 1.5))
            except Exception as exc:
                log.warning("producer flush incomplete", error=str(exc))
        # Closing from here: a revoke during the commit's rejoin commits and forgets at once.
        state.closing = True
        if state.fatal is None:
            budget = max(2.0, grace - (time.monotonic() - started) - _CLOSE_MARGIN_S)
            self.committer.commit_before_exit(
                budget_s=min(budget, 10.0), between_tries=self.consumer_loop.repair_stranded_join
            )
        log.info(
            "drained",
            abandoned=self.tracker.pending(),
            seconds=round(time.monotonic() - started, 2),
        )
        # Leaving the group promptly hands our partitions over now rather than after the
        # session timeout; give it what is left of the grace period (at least 2 s).
        self._close_clients(timeout_s=max(2.0, grace - (time.monotonic() - started) - 0.5))

    def _abort(self) -> None:
        """Fatal path: no commit at all; close quickly so the orchestrator restarts us."""
        state = self.state
        self.ctx.log.error(state.fatal or "fatal error", exit_code=state.exit_code)
        state.closing = True
        state.draining.set()
        self.pipeline.shutdown(wait=False)
        # Leave the group even now: the partitions move on at once instead of after a session
        # timeout (a dead broker makes this give up after the timeout).
        self._close_clients(timeout_s=_ABORT_CLOSE_S)

    def _close_clients(self, timeout_s: float) -> None:
        """Close the consumer (leaving the group, committing nothing) and the producer."""
        consumer, producer = self.state.consumer, self.state.producer
        if consumer is not None:
            try:
                consumer.close(autocommit=False, timeout_ms=int(timeout_s * 1000))
            except Exception as exc:
                self.ctx.log.warning("consumer close failed", error=str(exc))
        if producer is not None:
            try:
                producer.close(timeout=timeout_s)
            except Exception as exc:
                self.ctx.log.warning("producer close failed", error=str(exc))

"""The streaming worker: Kafka in, line models, results out, at least once (DESIGN.md §1, §4).

``Worker`` is a thin facade: it wires the parts below together, runs the consumer loop, and
drains or aborts at the end. Threads and who owns what:

- **consumer thread** (``run`` -> ``consumer_loop.ConsumerLoop``): the only user of the
  ``KafkaConsumer``. Polls, parses each record (``wire.parse_request``), registers it with the
  ``OffsetTracker``, hands it to the decode pool, pauses/resumes partitions
  (``flow_control``: backpressure, unavailable lines), commits the acked prefix every
  ``COMMIT_INTERVAL_S`` (``commits``) and probes the broker.
- **decode pool**, **inference thread**, **publisher thread** (``pipeline.Pipeline``): resolve
  the line's model and decode; run one batch at a time on the device; encode and produce.
- **producer IO thread** (kafka-python): delivery callbacks ``ack`` the tracker (``sink``).
- **consumer IO thread** (kafka-python 3): the rebalance callbacks (``rebalance``), run while
  the consumer thread is blocked in ``poll()``.

Nothing downstream of the consumer needs the consumer thread, so in-flight work keeps
finishing while ``poll()`` is blocked in a rebalance callback. That is what lets
``on_partitions_revoked`` wait (up to ``worker.rebalance_budget_s``) for the revoked
partitions' results to be acknowledged and commit them before ownership moves.

Failure paths, each named: ``BadRequest`` / ``DecodeFailed`` / unknown line -> dead letter with
its code; ``LineUnavailable`` -> the record is parked and its partition paused, retried every
``_PARK_RETRY_S``, dead-lettered ``line-unavailable`` after ``worker.line_unavailable_pause_s``;
a model exception -> ``model-error`` for that batch; a result the broker will not take within
``kafka.unreachable_timeout_s`` or a broker unreachable that long -> exit code 3, never
committing undelivered work; SIGTERM -> drain and exit 0 within ``worker.drain_grace_s``.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from memkd_stream.broker.clients import make_consumer, make_producer
from memkd_stream.log import get_logger
from memkd_stream.worker.commits import OffsetCommitter
from memkd_stream.worker.consumer_loop import ConsumerLoop
from memkd_stream.worker.decode import ImageDecoder
from memkd_stream.worker.flow_control import FlowControl
from memkd_stream.worker.health import Heartbeats
from memkd_stream.worker.metrics import WorkerMetrics
from memkd_stream.worker.offsets import OffsetTracker
from memkd_stream.worker.pipeline import Pipeline
from memkd_stream.worker.rebalance import RebalanceHandler
from memkd_stream.worker.run_state import EXIT_BROKER_UNREACHABLE, EXIT_OK, RunState
from memkd_stream.worker.sink import ResultSink

__all__ = ["EXIT_BROKER_UNREACHABLE", "EXIT_OK", "Worker"]

# Margin kept from drain_grace_s for flush, commit and close after the drain wait.
_CLOSE_MARGIN_S = 3.0


class Worker:
    """One worker process's pipeline. ``run()`` blocks and returns the exit code."""

    def __init__(
        self,
        settings: Any,
        engine: Any,
        *,
        metrics: WorkerMetrics | None = None,
        heartbeats: Heartbeats | None = None,
        consumer_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.kafka = settings.kafka
        self.ws = settings.worker
        self.engine = engine
        self.metrics = metrics or WorkerMetrics()
        self.heartbeats = heartbeats or Heartbeats()
        self.log = get_logger("memkd_stream.worker.app")
        self.worker_id = str(self.ws.worker_id)
        self.decoder = ImageDecoder(int(self.ws.max_image_pixels))
        self.tracker = OffsetTracker()
        self._consumer_overrides = consumer_overrides or {}
        self.state = RunState()
        self.sink = ResultSink(self.kafka, self.tracker, self.metrics, self.state, self.log)
        self.pipeline = Pipeline(
            settings,
            engine,
            self.decoder,
            self.tracker,
            self.metrics,
            self.heartbeats,
            self.sink,
            self.state.draining,
            self.log,
            self.worker_id,
        )
        self.flow = FlowControl(
            self.ws, self.tracker, self.metrics, self.state, self.pipeline, self.log
        )
        self.committer = OffsetCommitter(self.tracker, self.state, self.log)
        self.consumer_loop = ConsumerLoop(
            self.kafka,
            self.tracker,
            self.metrics,
            self.heartbeats,
            self.state,
            self.flow,
            self.pipeline,
            self.sink,
            self.committer,
            self.log,
        )
        self.rebalance = RebalanceHandler(
            self.ws,
            self.tracker,
            self.metrics,
            self.state,
            self.committer,
            self.flow,
            self.consumer_loop.next_offset,
            self.log,
        )
        stale = max(60.0, 3 * float(self.ws.rebalance_budget_s), float(self.ws.drain_grace_s))
        self.heartbeats.register("consumer", stale)
        self.heartbeats.register("inference", stale)

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

    def run(self) -> int:
        """Consume until stopped; returns the process exit code."""
        state = self.state
        try:
            self._start_clients()
        except Exception as exc:
            self.log.error(
                "Kafka broker unreachable at start; exiting so the worker is restarted",
                bootstrap=self.kafka.bootstrap_servers,
                error=str(exc),
            )
            self.pipeline.shutdown()
            return EXIT_BROKER_UNREACHABLE
        self.pipeline.start()
        self.log.info(
            "worker consuming",
            topic=self.kafka.inspect_topic,
            group=self.kafka.group_id,
            worker=self.worker_id,
        )
        try:
            self.consumer_loop.run()
        except Exception as exc:  # a bug in the loop must not look like a clean exit
            self.log.exception("consumer loop crashed", error=str(exc))
            state.fatal = state.fatal or f"consumer loop crashed: {exc}"
            state.exit_code = EXIT_BROKER_UNREACHABLE
        if state.fatal is None:
            self._drain()
        else:
            self._abort()
        return state.exit_code

    # ------------------------------------------------------------------ setup
    def _start_clients(self) -> None:
        kafka = self.kafka
        client_id = f"{kafka.client_id}-{self.worker_id}"
        self.state.producer = make_producer(kafka, client_id=client_id)
        overrides = {
            "bootstrap_timeout_ms": int(float(kafka.unreachable_timeout_s) * 1000),
            **self._consumer_overrides,
        }
        self.state.consumer = make_consumer(
            kafka,
            client_id=client_id,
            max_poll_records=max(1, int(self.ws.queue_max_records) // 4),
            **overrides,
        )
        self._await_topic_metadata(kafka.inspect_topic)
        self.state.consumer.subscribe([kafka.inspect_topic], listener=self.rebalance)
        self.consumer_loop.mark_broker_reachable()

    def _await_topic_metadata(self, topic: str, timeout_s: float = 10.0) -> None:
        """Know the inspect topic's partitions before joining the group.

        The group leader assigns from its own metadata cache. Joining before that cache knows a
        (just created) topic yields an empty assignment that kafka-python only revisits at the
        next metadata refresh: a worker idle for minutes (seen in the tests, one run in two).
        """
        deadline = time.monotonic() + timeout_s
        while not self.state.consumer.partitions_for_topic(topic):
            if time.monotonic() >= deadline:
                self.log.warning(
                    "inspect topic has no partitions yet; create it with 'memkd-stream topics "
                    "create' (consuming starts when it appears)",
                    topic=topic,
                )
                return
            time.sleep(0.5)

    # ------------------------------------------------------------------ shutdown
    def _drain(self) -> None:
        state = self.state
        grace = float(self.ws.drain_grace_s)
        started = time.monotonic()
        self.log.info("draining: polling stopped", in_flight=self.tracker.pending())
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
        if state.producer is not None:
            try:
                state.producer.flush(timeout=max(0.5, grace - (time.monotonic() - started) - 1.5))
            except Exception as exc:
                self.log.warning("producer flush incomplete", error=str(exc))
        if state.fatal is None:
            self.committer.commit(timeout_ms=2000)
        state.closing = True
        self.log.info(
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
        self.log.error(state.fatal or "fatal error", exit_code=state.exit_code)
        state.closing = True
        state.draining.set()
        self.pipeline.shutdown(wait=False)
        self._close_clients(timeout_s=0.5, leave_group=False)

    def _close_clients(self, timeout_s: float, leave_group: bool = True) -> None:
        consumer, producer = self.state.consumer, self.state.producer
        if consumer is not None:
            try:
                if leave_group:
                    consumer.close(autocommit=False, timeout_ms=int(timeout_s * 1000))
                else:
                    consumer.close(autocommit=False, timeout_ms=100)
            except Exception as exc:
                self.log.warning("consumer close failed", error=str(exc))
        if producer is not None:
            try:
                producer.close(timeout=timeout_s)
            except Exception as exc:
                self.log.warning("producer close failed", error=str(exc))

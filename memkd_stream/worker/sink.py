"""Producing results and dead letters, and turning the broker's acknowledgements into acks.

A record counts as finished only when the broker has acknowledged (acks=all) its result or its
dead letter: the delivery callback then ``ack``s the ``OffsetTracker``, which is what lets its
offset be committed (DESIGN.md §4). The callbacks run on the producer's IO thread
(kafka-python), so they only touch the thread-safe tracker and metrics.

Failure path: a record the broker will not take within ``kafka.unreachable_timeout_s`` (the
producer's delivery timeout) marks the run fatal (exit code 3); the record stays unacked, so it
is never committed and a restarted worker re-reads it.
"""

from __future__ import annotations

import time
from typing import Any

from memkd_stream.contract import wire
from memkd_stream.worker.offsets import OffsetTracker
from memkd_stream.worker.run_state import EXIT_BROKER_UNREACHABLE, RunState
from memkd_stream.worker.work_item import WorkItem, is_current, log_fields

__all__ = ["ResultSink"]

# Dead letters carry the image back; keep room for headers under max.message.bytes.
_DLQ_HEADER_ROOM = 64 * 1024


class ResultSink:
    """Sends results and dead letters for tracked records; acks the tracker on delivery."""

    def __init__(
        self, kafka: Any, tracker: OffsetTracker, metrics: Any, state: RunState, log: Any
    ) -> None:
        self.kafka = kafka
        self.tracker = tracker
        self.metrics = metrics
        self.state = state
        self.log = log
        self.max_dlq_value = max(0, int(kafka.max_message_bytes) - _DLQ_HEADER_ROOM)

    def dead_letter(
        self, item: WorkItem, code: str, detail: str, *, offset: int | None = None
    ) -> None:
        """Send the record to the dead-letter topic with its error code (DESIGN.md §3)."""
        offset = item.offset if offset is None else offset
        letter = wire.dead_letter(
            item.tp.topic,
            item.tp.partition,
            offset,
            item.key,
            item.value
            if item.value is not None
            else (item.request.value if item.request else None),
            item.headers,
            code,
            detail,
            self.max_dlq_value,
        )
        self.log.warning(
            "dead-lettered", code=code, detail=detail[:300], **log_fields(item, offset)
        )

        def acked(it: WorkItem, _sent: float) -> None:
            self.metrics.dead_lettered(code)

        self.send(
            self.kafka.dlq_topic,
            item,
            key=letter.key,
            value=letter.value,
            headers=letter.headers,
            on_ack=acked,
            offset=offset,
        )

    def send(
        self,
        topic: str,
        item: WorkItem,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        on_ack: Any,
        offset: int | None = None,
    ) -> None:
        """Produce one record for ``item``; ``on_ack(item, sent_perf)`` runs once it is acked."""
        offset = item.offset if offset is None else offset
        if not is_current(self.tracker, item):
            return  # partition revoked and abandoned: the next owner produces it
        sent = time.perf_counter()
        try:
            future = self.state.producer.send(topic, key=key, value=value, headers=headers)
        except Exception as exc:
            self._delivery_failed(item, offset, exc)
            return

        def ok(_metadata: Any) -> None:
            if self.tracker.ack(item.tp, offset, item.generation):
                on_ack(item, sent)

        future.add_callback(ok)
        future.add_errback(lambda exc: self._delivery_failed(item, offset, exc))

    def _delivery_failed(self, item: WorkItem, offset: int, exc: BaseException) -> None:
        # The idempotent producer already retried for delivery_timeout_ms
        # (= kafka.unreachable_timeout_s). The record stays unacknowledged, so it is never
        # committed; exiting lets a restarted worker re-read it.
        if self.state.fatal is None:
            self.state.fatal = f"result delivery failed: {type(exc).__name__}: {exc}"
            self.state.exit_code = EXIT_BROKER_UNREACHABLE
        self.log.error(
            "delivery failed; the record stays uncommitted",
            error=str(exc),
            **log_fields(item, offset),
        )

"""Producing results and dead letters, and turning the broker's acknowledgements into acks.

A record counts as finished only when the broker has acknowledged (acks=all) its result or its
dead letter: the delivery callback then ``ack``s the ``OffsetTracker``, which is what lets its
offset be committed (DESIGN.md §4). The callbacks run on the producer's IO thread
(kafka-python), so they only touch the thread-safe tracker and metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from memkd_stream.contract.codes import DeadLetterCode
from memkd_stream.contract.dead_letter import dead_letter
from memkd_stream.contract.headers import Headers
from memkd_stream.errors import ExitCode
from memkd_stream.worker.context import WorkerContext
from memkd_stream.worker.work_item import WorkItem, is_current, log_fields

__all__ = ["OnAck", "ResultSink"]

# Dead letters carry the image back; keep room for headers under max.message.bytes.
_DLQ_HEADER_ROOM = 64 * 1024

OnAck = Callable[[WorkItem, float], None]


class ResultSink:
    """Sends results and dead letters for tracked records; acks the tracker on delivery."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.max_dlq_value = max(0, int(ctx.kafka.max_message_bytes) - _DLQ_HEADER_ROOM)

    def dead_letter(
        self, item: WorkItem, code: DeadLetterCode, detail: str, *, offset: int | None = None
    ) -> None:
        """Send the record to the dead-letter topic with its error code (DESIGN.md §3)."""
        offset = item.offset if offset is None else offset
        value = item.value
        if value is None and item.request is not None:
            value = item.request.value
        letter = dead_letter(
            item.tp.topic,
            item.tp.partition,
            offset,
            item.key,
            value,
            item.headers,
            code,
            detail,
            self.max_dlq_value,
        )
        self.ctx.log.warning(
            "dead-lettered", code=code, detail=detail[:300], **log_fields(item, offset)
        )

        def acked(_item: WorkItem, _sent: float) -> None:
            self.ctx.metrics.dead_lettered(code)

        self.send(
            self.ctx.kafka.dlq_topic,
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
        headers: Headers,
        on_ack: OnAck,
        offset: int | None = None,
    ) -> None:
        """Produce one record for ``item``; ``on_ack(item, sent_perf)`` runs once it is acked."""
        offset = item.offset if offset is None else offset
        tracker = self.ctx.tracker
        if not is_current(tracker, item):
            return  # partition revoked and abandoned: the next owner produces it
        sent = time.perf_counter()
        try:
            future = self.ctx.state.kafka_producer.send(
                topic, key=key, value=value, headers=headers
            )
        except Exception as exc:
            self._delivery_failed(item, offset, exc)
            return

        def ok(_metadata: Any) -> None:
            if tracker.ack(item.tp, offset, item.generation):
                on_ack(item, sent)

        future.add_callback(ok)
        future.add_errback(lambda exc: self._delivery_failed(item, offset, exc))

    def _delivery_failed(self, item: WorkItem, offset: int, exc: BaseException) -> None:
        # The idempotent producer already retried for delivery_timeout_ms
        # (= kafka.unreachable_timeout_s). The record stays unacknowledged, so it is never
        # committed; exiting lets a restarted worker re-read it.
        self.ctx.state.fail(
            f"result delivery failed: {type(exc).__name__}: {exc}", ExitCode.BROKER_UNREACHABLE
        )
        self.ctx.log.error(
            "delivery failed; the record stays uncommitted",
            error=str(exc),
            **log_fields(item, offset),
        )

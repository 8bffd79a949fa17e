"""Producing results and dead letters, and turning the broker's acknowledgements into acks.

A record counts as finished only when the broker has acknowledged (acks=all) its result or its
dead letter: the delivery callback then ``ack``s the ``OffsetTracker``, which is what lets its
offset be committed (DESIGN.md §4). The callbacks run on the producer's IO thread
(kafka-python), so they only touch the thread-safe tracker and metrics.

Two kinds of failure, told apart by type, never by message text:

- **refused**: the client or the broker will not take *this* record (too large, malformed,
  a header the client cannot encode). That is the record's own fault, so it gets its dead
  letter (a result) or a smaller dead letter (a dead letter: the minimal one has only the error
  headers and always fits). One record can never stop the worker: this is what turned a keyless
  near-limit image into a crash loop of the whole group.
- **batch-mate**: the broker refused a produce batch for another record in it (an invalid
  record) and kafka-python fails the rest with a bare ``KafkaError``: sent again once, alone.
- **undeliverable**: the broker does not answer within ``kafka.unreachable_timeout_s``. The run
  turns fatal (exit code 3) and the record stays unacked, so it is never committed and a
  restarted worker re-reads it.

Every record gets exactly one output: a result, or (instead of it) one dead letter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kafka import errors as kafka_errors

from memkd_stream.contract.codes import DeadLetterCode
from memkd_stream.contract.dead_letter import dead_letter
from memkd_stream.contract.headers import Headers
from memkd_stream.errors import ExitCode
from memkd_stream.worker.context import WorkerContext
from memkd_stream.worker.work_item import WorkItem, is_current, log_fields

__all__ = ["OnAck", "ResultSink"]

OnAck = Callable[[WorkItem, float], None]
OnRefused = Callable[[BaseException], None]

# What a client or broker says about one record's content (the rest is about the broker).
_REFUSED: tuple[type[BaseException], ...] = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.InvalidRecordError,
    kafka_errors.CorruptRecordError,
    ValueError,  # includes UnicodeEncodeError of a header name
    TypeError,
)


class ResultSink:
    """Sends results and dead letters for tracked records; acks the tracker on delivery."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.max_record_bytes = ctx.kafka.max_message_bytes
        # A refusal reported by the producer's IO thread is answered from here: sending from
        # that thread could wait on metadata only that thread fetches.
        self._refusals = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memkd-refused")

    def close(self) -> None:
        """Finish the answers to refusals already reported (the drain waits for their acks)."""
        self._refusals.shutdown(wait=True)

    def result(
        self, item: WorkItem, *, key: bytes, value: bytes, headers: Headers, on_ack: OnAck
    ) -> None:
        """Publish ``item``'s result; one the broker refuses becomes its dead letter."""

        def refused(exc: BaseException) -> None:
            self.dead_letter(
                item,
                DeadLetterCode.MODEL_ERROR,
                f"the result could not be published ({type(exc).__name__}: {exc})",
            )

        self._send(
            self.ctx.kafka.results_topic,
            item,
            item.offset,
            key=key,
            value=value,
            headers=headers,
            on_ack=on_ack,
            on_refused=refused,
        )

    def dead_letter(
        self, item: WorkItem, code: DeadLetterCode, detail: str, *, offset: int | None = None
    ) -> None:
        """Send the record to the dead-letter topic with its error code (DESIGN.md §3)."""
        offset = item.offset if offset is None else offset
        value = item.value
        if value is None and item.request is not None:
            value = item.request.value
        self.ctx.log.warning(
            "dead-lettered", code=code, detail=detail[:300], **log_fields(item, offset)
        )
        self._send_dead_letter(item, offset, code, detail, item.key, value, item.headers)

    def _send_dead_letter(
        self,
        item: WorkItem,
        offset: int,
        code: DeadLetterCode,
        detail: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
    ) -> None:
        letter = dead_letter(
            item.tp.topic,
            item.tp.partition,
            offset,
            key,
            value,
            headers,
            code,
            detail,
            self.max_record_bytes,
        )
        minimal = key is None and value is None and not headers

        def acked(_item: WorkItem, _sent: float) -> None:
            self.ctx.metrics.dead_lettered(code)

        def refused(exc: BaseException) -> None:
            if minimal:  # only our own small headers are left: not the record's fault
                self._undeliverable(item, offset, exc)
                return
            self.ctx.log.warning(
                "dead letter refused; sending it without the record's key, value and headers",
                error=f"{type(exc).__name__}: {exc}",
                **log_fields(item, offset),
            )
            why = f"{detail} (the original record could not be re-published: {exc})"
            self._send_dead_letter(item, offset, code, why, None, None, [])

        self._send(
            self.ctx.kafka.dlq_topic,
            item,
            offset,
            key=letter.key,
            value=letter.value,
            headers=letter.headers,
            on_ack=acked,
            on_refused=refused,
        )

    def _send(
        self,
        topic: str,
        item: WorkItem,
        offset: int,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        on_ack: OnAck,
        on_refused: OnRefused,
        resent: bool = False,
    ) -> None:
        """Produce one record for ``item``: ``on_ack(item, sent_perf)`` once the broker has it,
        ``on_refused(exc)`` if this record is refused, fatal if the broker is unreachable.

        A record failed only for sharing a produce batch with a refused one (the broker rejects
        the whole batch and names the bad records; kafka-python fails the others with a bare
        ``KafkaError``) is sent again once, on its own."""
        tracker = self.ctx.tracker
        if not is_current(tracker, item):
            return  # partition revoked and abandoned: the next owner produces it
        sent = time.perf_counter()

        try:
            future = self.ctx.state.kafka_producer.send(
                topic, key=key, value=value, headers=headers
            )
        except _REFUSED as exc:
            on_refused(exc)
            return
        except Exception as exc:
            self._undeliverable(item, offset, exc)
            return

        def ok(_metadata: Any) -> None:
            if tracker.ack(item.tp, offset, item.generation):
                on_ack(item, sent)

        def resend() -> None:
            self._send(topic, item, offset, key=key, value=value, headers=headers,
                       on_ack=on_ack, on_refused=on_refused, resent=True)  # fmt: skip

        def failed(exc: BaseException) -> None:  # producer IO thread
            if isinstance(exc, _REFUSED):
                self._refusals.submit(on_refused, exc)
            elif type(exc) is kafka_errors.KafkaError and not resent:  # a refused one's batch-mate
                self._refusals.submit(resend)
            else:
                self._undeliverable(item, offset, exc)

        future.add_callback(ok)
        future.add_errback(failed)

    def _undeliverable(self, item: WorkItem, offset: int, exc: BaseException) -> None:
        # The producer already retried for delivery_timeout_ms
        # (= kafka.unreachable_timeout_s). The record stays unacknowledged, so it is never
        # committed; exiting lets a restarted worker re-read it.
        self.ctx.state.fail(
            f"Kafka broker unreachable: a result was not delivered within "
            f"kafka.unreachable_timeout_s={self.ctx.kafka.unreachable_timeout_s}: "
            f"{type(exc).__name__}: {exc}",
            ExitCode.BROKER_UNREACHABLE,
        )
        self.ctx.log.error(
            "delivery failed; the record stays uncommitted",
            error=str(exc),
            **log_fields(item, offset),
        )

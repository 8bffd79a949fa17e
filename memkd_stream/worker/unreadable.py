"""Records the Kafka client cannot parse: dead-letter them and move past them.

kafka-python parses a fetched batch inside ``poll()``. A batch it cannot read (a compression
codec it lacks, a corrupt batch, a header name that is not UTF-8) raises there, and the position
of its partition stays on the record: the next ``poll()`` spins on it forever inside the client
(kafka-python 3.0 busy-loops on a partition whose parse failed), so the worker would stall and
``/healthz`` would report it stuck. The error does not name the partition; the fetcher's frame
in its traceback does (``fetched_records`` holds the partition and offset it was reading), so
the worker reads them there, dead-letters that offset with what can be recovered (topic,
partition, offset: the client never hands over the bytes) and seeks past it before polling
again. Records after it in the same batch cannot be parsed by the client either (parsing is
sequential); each then costs one such step, never a loop.

Tied to kafka-python's fetcher (its frame and local names; the lock pins 3.0.x): when they are
not found, the worker stops loudly instead of spinning.
"""

from __future__ import annotations

from types import TracebackType

from kafka import TopicPartition
from kafka.errors import CorruptRecordError, KafkaError, UnsupportedCodecError

from memkd_stream.contract.codes import DeadLetterCode
from memkd_stream.worker.context import WorkerContext
from memkd_stream.worker.sink import ResultSink
from memkd_stream.worker.work_item import WorkItem

__all__ = ["UnreadableRecords", "is_unreadable_record", "where_parsing_failed"]


def is_unreadable_record(exc: BaseException) -> bool:
    """An error of parsing fetched records (not of talking to the broker or to the group)."""
    return isinstance(exc, UnsupportedCodecError | CorruptRecordError) or not isinstance(
        exc, KafkaError
    )


def where_parsing_failed(exc: BaseException) -> tuple[TopicPartition, int] | None:
    """The partition and offset kafka-python's fetcher was reading when ``exc`` was raised."""
    found: tuple[TopicPartition, int] | None = None
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "fetched_records":
            local = frame.f_locals
            meta = local.get("exc_meta")  # an error deferred from the previous call
            if meta is not None:
                found = (meta.partition, int(meta.fetched_offset))
            elif local.get("fetched_partition") is not None:
                found = (local["fetched_partition"], int(local["fetched_offset"]))
        tb = tb.tb_next
    return found


class UnreadableRecords:
    """Dead-letters the record behind a parse error of ``poll()``; consumer thread only."""

    def __init__(
        self, ctx: WorkerContext, sink: ResultSink, next_offset: dict[TopicPartition, int]
    ) -> None:
        self.ctx = ctx
        self.sink = sink
        self.next_offset = next_offset

    def skip(self, exc: BaseException) -> bool:
        """Dead-letter the record ``exc`` is about and seek past it.

        Returns False when the fetcher's position cannot be read from ``exc`` (the caller must
        then stop: polling again would spin on the same record).
        """
        found = where_parsing_failed(exc)
        if found is None:
            return False
        tp, offset = found
        consumer = self.ctx.state.kafka_consumer
        if tp not in consumer.assignment():
            return True  # revoked meanwhile: its next owner meets it
        generation = self.ctx.tracker.dispatch(tp, offset)
        self.next_offset[tp] = offset + 1
        self.ctx.metrics.record_in()
        item = WorkItem(
            tp=tp, generation=generation, offset=offset, key=None, value=None, headers=[]
        )
        self.sink.dead_letter(
            item,
            DeadLetterCode.UNREADABLE_RECORD,
            f"the Kafka client could not read this record ({type(exc).__name__}: {exc}); "
            "its key, value and headers could not be recovered",
        )
        consumer.seek(tp, offset + 1)
        return True

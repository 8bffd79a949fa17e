"""The sink: a record the broker refuses costs that record a dead letter, never the worker."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError

from memkd_stream.contract.codes import DeadLetterCode
from memkd_stream.errors import ExitCode
from memkd_stream.worker.app import Worker
from tests.support.worker_parts import TP0, tracked_item


class Future:
    def __init__(self) -> None:
        self.callbacks: list[Callable[[Any], None]] = []
        self.errbacks: list[Callable[[BaseException], None]] = []

    def add_callback(self, fn: Callable[[Any], None]) -> None:
        self.callbacks.append(fn)

    def add_errback(self, fn: Callable[[BaseException], None]) -> None:
        self.errbacks.append(fn)


class Producer:
    """Takes records whose value is at most ``limit`` bytes; ``refuse_later`` makes the refusal
    arrive through the future (as a broker's does) instead of from send()."""

    def __init__(self, limit: int, refuse_later: bool = False) -> None:
        self.limit, self.refuse_later = limit, refuse_later
        self.sent: list[tuple[str, bytes | None, bytes | None, list]] = []

    def send(self, topic: str, key=None, value=None, headers=None) -> Future:
        future = Future()
        too_big = value is not None and len(value) > self.limit
        if too_big and not self.refuse_later:
            raise MessageSizeTooLargeError("The message is too large")
        self.sent.append((topic, key, value, headers))
        return future

    def settle(self, futures: list[Future], exc: BaseException | None = None) -> None:
        for f in futures:
            for fn in f.errbacks if exc else f.callbacks:
                fn(exc if exc else None)


def _capture(producer: Producer) -> list[Future]:
    """The futures of every send, to settle them by hand as the broker would."""
    futures: list[Future] = []
    send = producer.send

    def capturing(*args: Any, **kwargs: Any) -> Future:
        futures.append(send(*args, **kwargs))
        return futures[-1]

    producer.send = capturing  # type: ignore[method-assign]
    return futures


def _topics(producer: Producer) -> list[str]:
    return [topic for topic, *_ in producer.sent]


def test_a_result_the_client_refuses_becomes_that_records_dead_letter(worker: Worker) -> None:
    worker.state.producer = producer = Producer(limit=100)
    item = tracked_item(worker, TP0, 0)
    worker.sink.result(item, key=b"A", value=b"x" * 500, headers=[], on_ack=lambda *a: None)
    assert _topics(producer) == [worker.ctx.kafka.dlq_topic]
    headers = dict(producer.sent[0][3])
    assert headers["memkd-error"] == DeadLetterCode.MODEL_ERROR.encode()
    assert b"could not be published" in headers["memkd-error-detail"]
    assert worker.state.fatal is None


def test_a_refusal_reported_by_the_broker_is_answered_off_the_io_thread(worker: Worker) -> None:
    worker.state.producer = producer = Producer(limit=10, refuse_later=True)
    futures = _capture(producer)
    item = tracked_item(worker, TP0, 0)
    worker.sink.dead_letter(item, DeadLetterCode.DECODE_ERROR, "not an image")
    assert producer.sent[0][1:3] == (b"A", b"x")  # first: the record's key and value
    producer.settle(futures[:1], MessageSizeTooLargeError("broker says too large"))
    worker.sink.close()  # waits for the answer
    (retry,) = producer.sent[1:]
    assert retry[1] == b"" and retry[2] is None  # no key, no value: the minimal letter
    assert dict(retry[3])["memkd-error"] == b"decode-error"
    assert worker.state.fatal is None


def test_an_unreachable_broker_is_fatal_and_nothing_is_acked(worker: Worker) -> None:
    worker.state.producer = producer = Producer(limit=1000, refuse_later=True)
    futures = _capture(producer)
    item = tracked_item(worker, TP0, 0)
    worker.sink.result(item, key=b"A", value=b"{}", headers=[], on_ack=lambda *a: None)
    producer.settle(futures, KafkaTimeoutError("Batch expired"))
    assert worker.state.exit_code == ExitCode.BROKER_UNREACHABLE
    assert worker.tracker.pending() == 1  # never committed


def test_a_record_failed_for_a_batch_mates_sake_is_sent_again_alone(worker: Worker) -> None:
    """The broker refused the batch for another record (an invalid one) and kafka-python fails
    the rest with a bare KafkaError: this record is sent once more, and a second failure of
    the same kind is the broker's, fatal as usual."""
    worker.state.producer = producer = Producer(limit=1000, refuse_later=True)
    futures = _capture(producer)
    acked: list[int] = []
    item = tracked_item(worker, TP0, 0)
    worker.sink.result(
        item, key=b"A", value=b"{}", headers=[], on_ack=lambda it, _t: acked.append(it.offset)
    )
    batch_mate = KafkaError("part of a batch which had one more more invalid records")
    producer.settle(futures[:1], batch_mate)
    worker.sink.close()  # waits for the resend to be handed to the producer
    assert _topics(producer) == [worker.ctx.kafka.results_topic] * 2  # the same result, again
    producer.settle(futures[1:2])
    assert acked == [0] and worker.state.fatal is None


def test_a_resent_batch_mate_that_fails_again_is_undeliverable(worker: Worker) -> None:
    worker.state.producer = producer = Producer(limit=1000, refuse_later=True)
    futures = _capture(producer)
    item = tracked_item(worker, TP0, 0)
    worker.sink.result(item, key=b"A", value=b"{}", headers=[], on_ack=lambda *a: None)
    producer.settle(futures[:1], KafkaError("batch-mate"))
    worker.sink.close()
    producer.settle(futures[1:2], KafkaError("batch-mate"))
    assert worker.state.exit_code == ExitCode.BROKER_UNREACHABLE
    assert worker.tracker.pending() == 1  # never committed

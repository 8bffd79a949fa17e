"""The consumer loop: a parse error whose record it cannot locate stops the worker; optional
headers that cannot be read are a warning and a count, never an inspection lost.

Polling again would spin on the same record inside kafka-python, so the loop stops loudly
(exit 1) instead; a parse error it can locate is dead-lettered (the poison integration tests).
"""

from __future__ import annotations

from types import SimpleNamespace

from kafka import TopicPartition
from structlog.testing import capture_logs

from memkd_stream.contract.headers import HEADER_ID, HEADER_SENT_AT
from memkd_stream.errors import ExitCode
from memkd_stream.worker.app import Worker
from memkd_stream.worker.work_item import WorkItem
from tests.support.worker_parts import TP0, FakeConsumer


class _UnlocatableParseError(FakeConsumer):
    """``poll()`` raises a non-Kafka error with no fetcher frame in its traceback."""

    def __init__(self, assigned: set[TopicPartition]) -> None:
        super().__init__(assigned)
        self.polls = 0

    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[object]]:
        self.polls += 1
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")


def test_an_unlocatable_unreadable_record_stops_the_worker_with_exit_1(worker: Worker) -> None:
    consumer = _UnlocatableParseError({TP0})
    worker.state.consumer = consumer  # type: ignore[assignment]  # the fake's poll is enough
    worker.consumer_loop.run()
    assert consumer.polls == 1  # stopped at once, no spinning
    assert worker.state.exit_code == ExitCode.FAILED
    assert worker.state.fatal is not None and "cannot be parsed" in worker.state.fatal


def test_a_malformed_sent_at_costs_no_inspection_only_a_warning_and_a_count(
    worker: Worker,
) -> None:
    submitted: list[WorkItem] = []
    worker.pipeline.submit = submitted.append  # type: ignore[method-assign]  # no pipeline here
    worker.state.consumer = FakeConsumer({TP0})
    headers = [(HEADER_ID, b"odd-1"), (HEADER_SENT_AT, b"yesterday")]
    record = SimpleNamespace(offset=7, key=b"A", value=b"png", headers=headers, timestamp=1_000)
    with capture_logs() as logs:
        worker.consumer_loop.accept(TP0, record)  # type: ignore[arg-type]  # the fields it reads
    (item,) = submitted  # scored as usual
    assert item.request is not None and item.request.sent_at_s == 1.0  # the record timestamp
    (warning,) = [e for e in logs if e["log_level"] == "warning"]
    assert warning["header"] == HEADER_SENT_AT and "ignored" in warning["event"]
    count = worker.ctx.metrics.registry.get_sample_value(
        "memkd_headers_ignored_total", {"header": HEADER_SENT_AT}
    )
    assert count == 1.0

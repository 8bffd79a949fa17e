"""The consumer loop's last resort: a parse error whose record it cannot locate stops the worker.

Polling again would spin on the same record inside kafka-python, so the loop stops loudly
(exit 1) instead; a parse error it can locate is dead-lettered (the poison integration tests).
"""

from __future__ import annotations

from kafka import TopicPartition

from memkd_stream.errors import ExitCode
from memkd_stream.worker.app import Worker
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

"""Offset commits: a refused commit is retried next round and counted, so a group stuck
rebalancing (results flowing, nothing committed) shows on /metrics and in an alert."""

from __future__ import annotations

import time

from kafka.errors import KafkaTimeoutError, RebalanceInProgressError

from memkd_stream.errors import ExitCode
from memkd_stream.worker.app import Worker
from tests.support.worker_parts import TP0, FakeConsumer, tracked_item


class CommittingConsumer(FakeConsumer):
    """The fake consumer, plus a ``commit`` that fails while ``refuse`` is set."""

    def __init__(self) -> None:
        super().__init__({TP0})
        self.refuse = True
        self.commits: list[dict[int, int]] = []

    def commit(self, offsets: dict, timeout_ms: int = 0) -> None:
        if self.refuse:
            raise RebalanceInProgressError("the group is rebalancing")
        self.commits.append({tp.partition: om.offset for tp, om in offsets.items()})


def test_refused_commit_is_counted_then_retried(worker: Worker) -> None:
    consumer = CommittingConsumer()
    worker.state.consumer = consumer  # type: ignore[assignment]
    val = worker.ctx.metrics.registry.get_sample_value
    worker.tracker.ack(TP0, tracked_item(worker, TP0, 0).offset)
    worker.committer.commit()
    worker.committer.commit()
    failures = {"error": "RebalanceInProgressError"}
    assert val("memkd_offset_commit_failures_total", failures) == 2
    assert val("memkd_offset_last_commit_timestamp_seconds") == 0
    assert worker.tracker.committable() == {TP0: 1}  # still owed: the next round retries it
    consumer.refuse = False
    before = time.time()
    worker.committer.commit()
    assert consumer.commits == [{0: 1}]
    assert val("memkd_offset_last_commit_timestamp_seconds") >= before - 1
    assert val("memkd_offset_commit_failures_total", failures) == 2


def test_commits_refused_past_the_stall_limit_stop_the_worker_with_exit_3(
    worker: Worker,
) -> None:
    settings = worker.ctx.settings
    kafka = settings.kafka.model_copy(update={"commit_stall_timeout_s": 0.2})
    worker = Worker(settings.model_copy(update={"kafka": kafka}), worker.engine)
    consumer = CommittingConsumer()
    worker.state.consumer = consumer  # type: ignore[assignment]
    worker.tracker.ack(TP0, tracked_item(worker, TP0, 0).offset)
    worker.committer.commit()
    worker.consumer_loop.check_commit_stall()
    assert worker.state.fatal is None  # refused, but not for long: retried next round
    time.sleep(0.3)
    worker.committer.commit()
    worker.consumer_loop.check_commit_stall()
    assert worker.state.fatal is not None
    assert worker.state.exit_code == ExitCode.BROKER_UNREACHABLE
    assert "kafka.commit_stall_timeout_s" in str(worker.state.fatal)
    assert "RebalanceInProgressError" in str(worker.state.fatal)


def test_a_success_or_nothing_owed_resets_the_stall_clock(worker: Worker) -> None:
    consumer = CommittingConsumer()
    worker.state.consumer = consumer  # type: ignore[assignment]
    worker.tracker.ack(TP0, tracked_item(worker, TP0, 0).offset)
    worker.committer.commit()
    assert worker.committer.failing_for_s() > 0
    consumer.refuse = False
    worker.committer.commit()
    assert worker.committer.failing_for_s() == 0
    consumer.refuse = True
    worker.committer.commit()  # nothing owed since the last commit: no refusal to time
    assert worker.committer.failing_for_s() == 0


class RejoiningConsumer(CommittingConsumer):
    """Refuses commits until a ``poll`` has completed the rejoin, as kafka-python does."""

    def __init__(self, refusal: Exception) -> None:
        super().__init__()
        self.refusal = refusal
        self.polls = 0

    def commit(self, offsets: dict, timeout_ms: int = 0) -> None:
        if self.refuse:
            raise self.refusal
        super().commit(offsets, timeout_ms)

    def poll(self, timeout_ms: int = 0) -> dict:
        assert self.paused == self.assigned  # no new records while the drain rejoins
        self.polls += 1
        self.refuse = False
        return {}


def test_the_drains_last_commit_rejoins_a_rebalancing_group_then_commits(worker: Worker) -> None:
    consumer = RejoiningConsumer(RebalanceInProgressError("rejoining"))
    worker.state.consumer = consumer  # type: ignore[assignment]
    worker.tracker.ack(TP0, tracked_item(worker, TP0, 0).offset)
    assert worker.committer.commit_before_exit(budget_s=5) is True
    assert consumer.polls == 1
    assert consumer.commits == [{0: 1}]
    assert worker.tracker.committable() == {}


def test_the_drains_last_commit_gives_up_on_other_refusals_and_at_its_budget(
    worker: Worker,
) -> None:
    consumer = RejoiningConsumer(KafkaTimeoutError("broker gone"))
    worker.state.consumer = consumer  # type: ignore[assignment]
    worker.tracker.ack(TP0, tracked_item(worker, TP0, 0).offset)
    assert worker.committer.commit_before_exit(budget_s=5) is False
    assert consumer.polls == 0  # a dead broker: no rejoin to wait for
    stuck = RejoiningConsumer(RebalanceInProgressError("rejoining"))
    stuck.poll = lambda timeout_ms=0: {}  # type: ignore[method-assign]  # never rejoins
    worker.state.consumer = stuck  # type: ignore[assignment]
    started = time.monotonic()
    assert worker.committer.commit_before_exit(budget_s=0.3) is False
    assert time.monotonic() - started < 2
    assert worker.tracker.committable() == {TP0: 1}  # still owed: the next owner re-reads it


def test_a_poll_that_raises_does_not_stop_the_drains_last_commit(worker: Worker) -> None:
    consumer = RejoiningConsumer(RebalanceInProgressError("rejoining"))
    calls = {"n": 0}

    def flaky_poll(timeout_ms: int = 0) -> dict:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a rebalance callback failed")
        consumer.refuse = False
        return {}

    consumer.poll = flaky_poll  # type: ignore[method-assign]
    worker.state.consumer = consumer  # type: ignore[assignment]
    worker.tracker.ack(TP0, tracked_item(worker, TP0, 0).offset)
    assert worker.committer.commit_before_exit(budget_s=5) is True
    assert consumer.commits == [{0: 1}]

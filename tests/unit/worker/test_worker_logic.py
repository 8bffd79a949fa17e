"""Worker bookkeeping without a broker: revoke within budget, backpressure, parked records."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
from kafka import TopicPartition

from memkd_stream.settings import load_settings
from memkd_stream.worker.app import Worker
from memkd_stream.worker.work_item import WorkItem as _Item


class FakeConsumer:
    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = set(assigned)
        self.paused: set[TopicPartition] = set()

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def pause(self, *tps: TopicPartition) -> None:
        assert set(tps) <= self.assigned
        self.paused |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused -= set(tps)


TP0 = TopicPartition("in", 0)
TP1 = TopicPartition("in", 1)


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch) -> Worker:
    for key in list(__import__("os").environ):
        if key.startswith("MEMKD_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("MEMKD_WORKER__QUEUE_MAX_RECORDS", "8")
    monkeypatch.setenv("MEMKD_WORKER__REBALANCE_BUDGET_S", "0.5")
    engine = SimpleNamespace(teachers_loaded=True)
    w = Worker(load_settings(), engine)
    w.state.consumer = FakeConsumer({TP0, TP1})
    return w


def _item(w: Worker, tp: TopicPartition, offset: int) -> _Item:
    generation = w.tracker.dispatch(tp, offset)
    return _Item(tp=tp, generation=generation, offset=offset, key=b"A", value=b"x", headers=[])


def test_revoke_waits_for_in_flight_then_commits_and_forgets(worker: Worker) -> None:
    for offset in range(3):
        _item(worker, TP0, offset)
    _item(worker, TP1, 0)

    def finish() -> None:
        for offset in (2, 0, 1):
            worker.tracker.ack(TP0, offset)

    threading.Timer(0.05, finish).start()
    offsets = worker.rebalance.finish_revoked({TP0})
    assert {tp: om.offset for tp, om in offsets.items()} == {TP0: 3}
    assert worker.tracker.generation(TP0) is None  # forgotten
    assert worker.tracker.pending([TP1]) == 1  # other partitions untouched


def test_revoke_abandons_after_budget_committing_only_the_prefix(worker: Worker) -> None:
    for offset in range(4):
        _item(worker, TP0, offset)
    worker.tracker.ack(TP0, 0)
    worker.tracker.ack(TP0, 2)
    started = time.monotonic()
    offsets = worker.rebalance.finish_revoked({TP0})
    assert 0.4 < time.monotonic() - started < 3
    assert {tp: om.offset for tp, om in offsets.items()} == {TP0: 1}  # never past offset 1


def test_parked_partition_is_not_waited_for(worker: Worker) -> None:
    item = _item(worker, TP0, 0)
    worker.flow.parked[TP0] = [(time.monotonic() + 60, item)]
    started = time.monotonic()
    offsets = worker.rebalance.finish_revoked({TP0})
    assert time.monotonic() - started < 0.3
    assert offsets == {}
    assert TP0 not in worker.flow.parked


def test_backpressure_pauses_all_and_resumes_below_low_water(worker: Worker) -> None:
    consumer = worker.state.consumer
    items = [_item(worker, TP0, o) for o in range(8)]
    worker.flow.update_pauses()
    assert consumer.paused == {TP0, TP1}
    for it in items[:3]:
        worker.tracker.ack(TP0, it.offset, it.generation)
    worker.flow.update_pauses()
    assert consumer.paused == {TP0, TP1}  # 5 in flight: still above the low-water mark (4)
    worker.tracker.ack(TP0, items[3].offset)
    worker.flow.update_pauses()
    assert consumer.paused == set()


def test_parked_record_pauses_only_its_partition(worker: Worker) -> None:
    item = _item(worker, TP1, 0)
    worker.pipeline.control_q.put(("park", item))
    worker.pipeline.decode_pool = SimpleNamespace(submit=lambda fn, it: None)
    worker.flow.handle_control()
    worker.flow.update_pauses()
    assert worker.state.consumer.paused == {TP1}
    # due for a retry: moves to "retrying", still paused until the retry reports back
    worker.flow.parked[TP1] = [(0.0, item)]
    worker.flow.handle_control()
    assert worker.flow.retrying[TP1] == 1
    worker.flow.update_pauses()
    assert worker.state.consumer.paused == {TP1}
    worker.pipeline.control_q.put(("retry_done", item))
    worker.flow.handle_control()
    worker.flow.update_pauses()
    assert worker.state.consumer.paused == set()


def test_late_result_of_a_revoked_partition_is_not_sent(worker: Worker) -> None:
    item = _item(worker, TP0, 0)
    worker.rebalance.forget({TP0}, reason="revoked")
    sent = []
    worker.state.producer = SimpleNamespace(send=lambda *a, **k: sent.append(a))
    worker.sink.send("out", item, key=b"A", value=b"{}", headers=[], on_ack=lambda *a: None)
    assert sent == []

"""Revoked partitions: finished within the budget, committed up to the acked prefix, forgotten."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace
from typing import Any

from memkd_stream.worker.app import Worker
from tests.support.worker_parts import TP0, TP1, tracked_item


def test_revoke_waits_for_in_flight_then_commits_and_forgets(worker: Worker) -> None:
    for offset in range(3):
        tracked_item(worker, TP0, offset)
    tracked_item(worker, TP1, 0)

    def finish() -> None:
        for offset in (2, 0, 1):
            worker.tracker.ack(TP0, offset)

    threading.Timer(0.05, finish).start()
    offsets = asyncio.run(worker.rebalance.finish_revoked({TP0}))
    assert {tp: om.offset for tp, om in offsets.items()} == {TP0: 3}
    assert worker.tracker.generation(TP0) is None  # forgotten
    assert worker.tracker.pending([TP1]) == 1  # other partitions untouched


def test_revoke_abandons_after_budget_committing_only_the_prefix(worker: Worker) -> None:
    for offset in range(4):
        tracked_item(worker, TP0, offset)
    worker.tracker.ack(TP0, 0)
    worker.tracker.ack(TP0, 2)
    started = time.monotonic()
    offsets = asyncio.run(worker.rebalance.finish_revoked({TP0}))
    assert 0.4 < time.monotonic() - started < 3
    assert {tp: om.offset for tp, om in offsets.items()} == {TP0: 1}  # never past offset 1


def test_parked_partition_is_not_waited_for(worker: Worker) -> None:
    item = tracked_item(worker, TP0, 0)
    worker.flow.parked[TP0] = [(time.monotonic() + 60, item)]
    started = time.monotonic()
    offsets = asyncio.run(worker.rebalance.finish_revoked({TP0}))
    assert time.monotonic() - started < 0.3
    assert offsets == {}
    assert TP0 not in worker.flow.parked


def test_late_result_of_a_revoked_partition_is_not_sent(worker: Worker) -> None:
    item = tracked_item(worker, TP0, 0)
    worker.rebalance.forget({TP0}, reason="revoked")
    sent = []
    worker.state.producer = SimpleNamespace(send=lambda *a, **k: sent.append(a))
    worker.sink.result(item, key=b"A", value=b"{}", headers=[], on_ack=lambda *a: None)
    assert sent == []


def test_the_revoke_wait_yields_to_the_clients_loop(worker: Worker) -> None:
    """Heartbeats run on kafka-python's IO loop: the wait must not block it."""
    yields: list[float] = []

    class Net:
        def sleep(self, delay: float) -> Any:
            yields.append(delay)
            return asyncio.sleep(0)

    worker.state.consumer.__dict__["_net"] = Net()  # type: ignore[union-attr]
    tracked_item(worker, TP0, 0)
    threading.Timer(0.1, lambda: worker.tracker.ack(TP0, 0)).start()
    offsets = asyncio.run(worker.rebalance.finish_revoked({TP0}))
    assert {tp: om.offset for tp, om in offsets.items()} == {TP0: 1}
    assert len(yields) >= 2  # it waited by yielding, several times

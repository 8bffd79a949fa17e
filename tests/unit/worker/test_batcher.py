"""MicroBatcher: size and age flushes, per-key independence, fairness."""

from __future__ import annotations

import random

import pytest

from memkd_stream.worker.batcher import MicroBatcher


def test_flushes_at_max_batch() -> None:
    b: MicroBatcher[int] = MicroBatcher(max_batch=3, max_wait_s=10.0)
    for i in range(3):
        b.add("A", i, now=0.0)
    ready = b.pop_ready(now=0.0)
    assert [x.items for x in ready] == [[0, 1, 2]]
    assert len(b) == 0


def test_flushes_after_max_wait_only() -> None:
    b: MicroBatcher[int] = MicroBatcher(max_batch=8, max_wait_s=0.02)
    b.add("A", 1, now=1.0)
    b.add("A", 2, now=1.01)
    assert b.pop_ready(now=1.019) == []
    assert b.next_deadline() == pytest.approx(1.02)
    ready = b.pop_ready(now=1.02)
    assert [x.items for x in ready] == [[1, 2]]
    assert b.next_deadline() is None


def test_slow_line_does_not_hold_busy_line() -> None:
    b: MicroBatcher[str] = MicroBatcher(max_batch=4, max_wait_s=0.5)
    b.add("slow", "s0", now=0.0)
    for i in range(4):
        b.add("busy", f"b{i}", now=0.1)
    ready = b.pop_ready(now=0.1)
    assert [x.key for x in ready] == ["busy"]  # busy batch is out long before slow's deadline
    assert b.next_deadline() == pytest.approx(0.5)
    ready = b.pop_ready(now=0.5)
    assert [(x.key, x.items) for x in ready] == [("slow", ["s0"])]


def test_ready_batches_come_out_oldest_first() -> None:
    b: MicroBatcher[int] = MicroBatcher(max_batch=2, max_wait_s=0.1)
    b.add("trickle", 0, now=0.0)
    b.add("busy", 1, now=0.05)
    b.add("busy", 2, now=0.06)
    ready = b.pop_ready(now=0.2)
    assert [x.key for x in ready] == ["trickle", "busy"]


def test_full_group_restarts_a_new_batch() -> None:
    b: MicroBatcher[int] = MicroBatcher(max_batch=2, max_wait_s=1.0)
    for i in range(5):
        b.add("A", i, now=float(i))
    assert len(b) == 5
    assert b.next_deadline() == 0.0  # a full batch is ready now
    ready = b.pop_ready(now=4.0)
    assert [x.items for x in ready] == [[0, 1], [2, 3]]
    assert b.next_deadline() == pytest.approx(5.0)
    assert [x.items for x in b.pop_all()] == [[4]]
    assert len(b) == 0


def test_no_item_lost_or_duplicated_random() -> None:
    rng = random.Random(0)
    b: MicroBatcher[int] = MicroBatcher(max_batch=5, max_wait_s=0.03)
    now = 0.0
    out: list[int] = []
    for i in range(2000):
        now += rng.random() * 0.01
        b.add(rng.choice("ABCD"), i, now=now)
        for batch in b.pop_ready(now=now):
            assert 1 <= len(batch.items) <= 5
            assert now - batch.first_at >= 0.03 or len(batch.items) == 5
            out.extend(batch.items)
    out.extend(i for batch in b.pop_all() for i in batch.items)
    assert sorted(out) == list(range(2000))


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(max_batch=0, max_wait_s=0.1)
    with pytest.raises(ValueError):
        MicroBatcher(max_batch=1, max_wait_s=-1)


def test_weighted_items_count_against_max_batch() -> None:
    # A tiled frame weighs its tile count: max_batch bounds the tiles of one forward.
    b: MicroBatcher[str] = MicroBatcher(max_batch=8, max_wait_s=10.0)
    b.add("A", "f3", now=0.0, weight=3)
    b.add("A", "g3", now=0.0, weight=3)
    assert b.pop_ready(now=0.0) == []
    b.add("A", "h4", now=0.1, weight=4)  # 3 + 3 + 4 > 8: the open group runs without it
    assert [x.items for x in b.pop_ready(now=0.1)] == [["f3", "g3"]]
    b.add("A", "big", now=0.2, weight=20)  # heavier than max_batch: closes h4's group, runs alone
    ready = b.pop_ready(now=0.2)
    assert [(x.items, x.weight) for x in ready] == [(["h4"], 4), (["big"], 20)]
    assert len(b) == 0

"""OffsetTracker: commits never pass an unfinished record, whatever the completion order."""

from __future__ import annotations

import random
import threading

import pytest

from memkd_stream.worker.offsets import OffsetTracker


def _reference_committable(dispatched: list[int], acked: set[int]) -> int | None:
    """Offset after the longest all-acked prefix of ``dispatched`` (None if empty prefix)."""
    out = None
    for offset in dispatched:
        if offset not in acked:
            break
        out = offset + 1
    return out


def test_in_order_acks_commit_each_step() -> None:
    tracker = OffsetTracker()
    for offset in range(5):
        tracker.dispatch("p0", offset)
    assert tracker.committable() == {}
    tracker.ack("p0", 0)
    assert tracker.committable() == {"p0": 1}
    tracker.ack("p0", 1)
    tracker.ack("p0", 2)
    assert tracker.committable() == {"p0": 3}


def test_out_of_order_ack_waits_for_the_hole() -> None:
    tracker = OffsetTracker()
    for offset in (10, 11, 12, 13):
        tracker.dispatch("p", offset)
    tracker.ack("p", 12)
    tracker.ack("p", 13)
    assert tracker.committable() == {}
    assert tracker.pending() == 2
    tracker.ack("p", 10)
    assert tracker.committable() == {"p": 11}
    tracker.ack("p", 11)
    assert tracker.committable() == {"p": 14}
    assert tracker.pending() == 0


def test_offset_holes_are_respected() -> None:
    # compaction / transaction markers leave gaps: the prefix is over dispatched records
    tracker = OffsetTracker()
    for offset in (3, 7, 8, 20):
        tracker.dispatch("p", offset)
    tracker.ack("p", 3)
    tracker.ack("p", 8)
    assert tracker.committable() == {"p": 4}
    tracker.ack("p", 7)
    assert tracker.committable() == {"p": 9}
    tracker.ack("p", 20)
    assert tracker.committable() == {"p": 21}


def test_partitions_are_independent() -> None:
    tracker = OffsetTracker()
    tracker.dispatch("a", 0)
    tracker.dispatch("b", 0)
    tracker.dispatch("b", 1)
    tracker.ack("b", 1)
    tracker.ack("a", 0)
    assert tracker.committable() == {"a": 1}
    assert tracker.pending(["b"]) == 1
    assert tracker.pending(["a"]) == 0


def test_mark_committed_reports_only_progress() -> None:
    tracker = OffsetTracker()
    tracker.dispatch("p", 0)
    tracker.dispatch("p", 1)
    tracker.ack("p", 0)
    offsets = tracker.committable()
    tracker.mark_committed(offsets)
    assert tracker.committable() == {}
    tracker.ack("p", 1)
    assert tracker.committable() == {"p": 2}


def test_forget_drops_pending_and_ignores_late_acks() -> None:
    tracker = OffsetTracker()
    tracker.dispatch("p", 0)
    tracker.dispatch("p", 1)
    tracker.dispatch("q", 5)
    assert tracker.pending() == 3
    tracker.forget("p")
    assert tracker.pending() == 1
    assert tracker.ack("p", 0) is False
    assert "p" not in tracker.committable()
    # reassigned later: starts fresh from whatever the group committed
    tracker.dispatch("p", 1)
    tracker.ack("p", 1)
    assert tracker.committable() == {"p": 2}


def test_double_ack_and_unknown_ack_are_harmless() -> None:
    tracker = OffsetTracker()
    tracker.dispatch("p", 0)
    tracker.dispatch("p", 1)
    assert tracker.ack("p", 1) is True
    assert tracker.ack("p", 1) is False
    assert tracker.ack("p", 99) is False
    assert tracker.pending() == 1


def test_dispatch_out_of_order_is_refused() -> None:
    tracker = OffsetTracker()
    tracker.dispatch("p", 5)
    with pytest.raises(ValueError):
        tracker.dispatch("p", 5)
    with pytest.raises(ValueError):
        tracker.dispatch("p", 4)


@pytest.mark.parametrize("seed", range(40))
def test_random_completion_orders_match_reference(seed: int) -> None:
    rng = random.Random(seed)
    tracker = OffsetTracker()
    parts = ["p0", "p1", "p2"]
    dispatched: dict[str, list[int]] = {p: [] for p in parts}
    acked: dict[str, set[int]] = {p: set() for p in parts}
    next_offset = {p: rng.randint(0, 100) for p in parts}
    for _ in range(300):
        if rng.random() < 0.55:
            p = rng.choice(parts)
            next_offset[p] += rng.choice((1, 1, 1, 2, 5))  # with occasional holes
            tracker.dispatch(p, next_offset[p])
            dispatched[p].append(next_offset[p])
        else:
            p = rng.choice(parts)
            open_ = [o for o in dispatched[p] if o not in acked[p]]
            if open_:
                o = rng.choice(open_)
                tracker.ack(p, o)
                acked[p].add(o)
        if rng.random() < 0.2:
            got = tracker.committable()
            for p in parts:
                want = _reference_committable(dispatched[p], acked[p])
                if p in got:
                    assert got[p] == want
                    # never past an unfinished record
                    assert all(o in acked[p] for o in dispatched[p] if o < got[p])
            tracker.mark_committed(got)
        pending = sum(len(dispatched[p]) - len(acked[p]) for p in parts)
        assert tracker.pending() == pending
    final = tracker.committable()
    for p in parts:
        want = _reference_committable(dispatched[p], acked[p])
        assert final.get(p, want) == want


def test_wait_idle_wakes_on_ack_from_another_thread() -> None:
    tracker = OffsetTracker()
    for offset in range(3):
        tracker.dispatch("p", offset)
    tracker.dispatch("q", 0)

    def finish() -> None:
        for offset in (2, 0, 1):
            tracker.ack("p", offset)

    thread = threading.Timer(0.05, finish)
    thread.start()
    assert tracker.wait_idle(["p"], timeout_s=5.0) is True
    thread.join()
    assert tracker.wait_idle(["q"], timeout_s=0.05) is False
    assert tracker.wait_idle(None, timeout_s=0.01) is False


def test_late_ack_from_a_forgotten_generation_is_ignored() -> None:
    tracker = OffsetTracker()
    old = tracker.dispatch("p", 5)
    tracker.forget("p")  # revoked while offset 5 was in flight
    new = tracker.dispatch("p", 5)  # re-assigned, re-read from the committed offset
    assert new != old
    assert tracker.ack("p", 5, old) is False  # the abandoned copy finishing late
    assert tracker.committable() == {}
    assert tracker.ack("p", 5, new) is True
    assert tracker.committable() == {"p": 6}

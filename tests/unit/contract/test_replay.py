"""Replaying a dead letter (DESIGN.md §3): the original record comes back with its original id
and a bounded replay count; a dead letter that lost part of the record is never replayed."""

from __future__ import annotations

import pytest

from memkd_stream.contract.dead_letter import dead_letter
from memkd_stream.contract.replay import (
    MAX_REPLAYS,
    NotReplayable,
    Replay,
    SkipReason,
    plan_replay,
    replay_count,
)


def _letter(headers=None, key=b"A", value=b"image-bytes", code="line-unavailable", limit=10**6):
    letter = dead_letter("memkd.inspect", 2, 41, key, value, headers, code, "why", limit)
    return letter.key, letter.value, letter.headers


def test_the_original_record_comes_back_with_its_id_and_count_one() -> None:
    sent = [("station", b"7"), ("memkd-id", b"part-42"), ("memkd-sent-at", b"1700000000000")]
    plan = plan_replay(*_letter(sent))
    assert isinstance(plan, Replay)
    assert (plan.key, plan.value, plan.id, plan.count) == (b"A", b"image-bytes", "part-42", 1)
    assert plan.headers == [
        ("station", b"7"),
        ("memkd-sent-at", b"1700000000000"),  # its age is the camera's, not the replay's
        ("memkd-id", b"part-42"),
        ("memkd-replay-count", b"1"),
    ]


def test_without_a_memkd_id_the_source_is_the_original_id() -> None:
    plan = plan_replay(*_letter([]))
    assert isinstance(plan, Replay) and plan.id == "memkd.inspect:2:41"
    assert ("memkd-id", b"memkd.inspect:2:41") in plan.headers


def test_the_count_grows_per_replay_and_stops_at_the_bound() -> None:
    headers = [("memkd-id", b"x")]
    for expected in range(1, MAX_REPLAYS + 1):
        plan = plan_replay(*_letter(headers))
        assert isinstance(plan, Replay) and plan.count == expected
        headers = plan.headers  # the worker dead-letters the replay again, headers kept
    plan = plan_replay(*_letter(headers))
    assert isinstance(plan, NotReplayable)
    assert plan.reason is SkipReason.REPLAY_BOUND and plan.count == MAX_REPLAYS


@pytest.mark.parametrize(
    ("letter", "reason"),
    [
        (_letter(value=b"v" * 5000, limit=2000), SkipReason.VALUE_DROPPED),
        (_letter([("big", b"h" * 5000)], value=None, limit=2000), SkipReason.HEADERS_DROPPED),
        (_letter(key=b"k" * 5000, value=None, limit=2000), SkipReason.KEY_DROPPED),
        (_letter(key=None, value=None, code="unreadable-record"), SkipReason.NOT_RECOVERED),
        (_letter([("memkd-replay-count", b"many")]), SkipReason.BAD_REPLAY_COUNT),
        (_letter([("memkd-id", b"a"), ("MEMKD-ID", b"b")]), SkipReason.BAD_ID),
        (_letter([("memkd-id", b"\xff")]), SkipReason.BAD_ID),
    ],
    ids=lambda v: v.value if isinstance(v, SkipReason) else "",
)
def test_what_cannot_be_replayed_faithfully_is_listed(letter, reason) -> None:
    plan = plan_replay(*letter)
    assert isinstance(plan, NotReplayable) and plan.reason is reason
    assert plan.detail


def test_replay_count_reads_only_counts_we_wrote() -> None:
    assert replay_count([]) == 0
    assert replay_count([("Memkd-Replay-Count", b"2")]) == 2
    assert replay_count([("memkd-replay-count", b"-1")]) is None
    assert replay_count([("memkd-replay-count", b"1"), ("memkd-replay-count", b"1")]) is None

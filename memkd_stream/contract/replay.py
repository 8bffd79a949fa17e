"""Replaying a dead letter (DESIGN.md §3-§4): what goes back to the inspect topic, or why not.

A replay re-produces the record that was dead-lettered: its key, value and headers as the dead
letter kept them, without the worker's error headers, with ``memkd-id`` set to the original id
(so its result joins the image it belongs to) and ``memkd-replay-count`` one higher. It is a new
request. The count is bounded by ``MAX_REPLAYS``, so a record that fails every time cannot loop
forever. A dead letter that lost part of its record (value, key or sender headers left out to
fit the size limit, or a record the Kafka client never parsed) is not replayed: what came back
would not be what the camera sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from memkd_stream.contract.codes import DeadLetterCode
from memkd_stream.contract.errors import BadRequest
from memkd_stream.contract.headers import (
    DLQ_HEADERS,
    HEADER_ERROR,
    HEADER_HEADERS_DROPPED,
    HEADER_ID,
    HEADER_KEY_DROPPED,
    HEADER_REPLAY_COUNT,
    HEADER_SOURCE,
    HEADER_VALUE_DROPPED,
    Headers,
)
from memkd_stream.contract.request import parse_id

__all__ = ["MAX_REPLAYS", "NotReplayable", "Replay", "SkipReason", "plan_replay", "replay_count"]

# How often one record may be replayed, counted over its whole lineage (a replay that is
# dead-lettered again keeps its count): enough for "the artifact was fixed, then Redis blinked".
MAX_REPLAYS = 3
# The count is a small decimal number; anything longer is not one we wrote.
_MAX_COUNT_DIGITS = 6
_REPLACED = frozenset({*DLQ_HEADERS, HEADER_ID, HEADER_REPLAY_COUNT})


class SkipReason(StrEnum):
    """Why a dead letter is listed and not replayed."""

    NOT_RECOVERED = "not-recovered"
    VALUE_DROPPED = "value-dropped"
    KEY_DROPPED = "key-dropped"
    HEADERS_DROPPED = "headers-dropped"
    REPLAY_BOUND = "replay-bound"
    BAD_REPLAY_COUNT = "bad-replay-count"
    BAD_ID = "bad-id"


@dataclass(frozen=True)
class Replay:
    """The record to produce to the inspect topic; ``count`` is its new replay count."""

    key: bytes | None
    value: bytes | None = field(repr=False)
    headers: Headers
    id: str
    count: int


@dataclass(frozen=True)
class NotReplayable:
    """A dead letter that stays where it is; ``count`` is its replay count so far (None when
    its header is unreadable)."""

    reason: SkipReason
    detail: str
    count: int | None


def _values(headers: Headers, name: str) -> list[bytes]:
    return [raw for header, raw in headers if header.lower() == name]


def replay_count(headers: Headers) -> int | None:
    """How often this record was replayed already: 0 without the header, None when the header
    is repeated or not a small decimal number."""
    found = _values(headers, HEADER_REPLAY_COUNT)
    if not found:
        return 0
    text = found[0].decode("ascii", errors="replace").strip()
    if len(found) > 1 or not text.isdigit() or len(text) > _MAX_COUNT_DIGITS:
        return None
    return int(text)


def _original_id(headers: Headers) -> str | None:
    """The id the original request had: its ``memkd-id``, else its source (the default id)."""
    ids = _values(headers, HEADER_ID)
    if len(ids) > 1:
        return None
    if ids:
        try:
            return parse_id(ids[0])
        except BadRequest:
            return None
    sources = _values(headers, HEADER_SOURCE)
    return sources[0].decode("utf-8", errors="replace") if len(sources) == 1 else None


def plan_replay(key: bytes | None, value: bytes | None, headers: Headers) -> Replay | NotReplayable:
    """What replaying this dead letter (as read from the dead-letter topic) produces."""
    headers = [(name, b"" if raw is None else bytes(raw)) for name, raw in headers]
    count = replay_count(headers)
    codes = _values(headers, HEADER_ERROR)
    if DeadLetterCode.UNREADABLE_RECORD.value.encode() in codes:
        why = "the Kafka client could not parse the original record; nothing of it was kept"
        return NotReplayable(SkipReason.NOT_RECOVERED, why, count)
    for name, reason, what in (
        (HEADER_VALUE_DROPPED, SkipReason.VALUE_DROPPED, "its image"),
        (HEADER_KEY_DROPPED, SkipReason.KEY_DROPPED, "its key (the line id)"),
        (HEADER_HEADERS_DROPPED, SkipReason.HEADERS_DROPPED, "some of its headers"),
    ):
        dropped = _values(headers, name)
        if dropped:
            size = dropped[0].decode("ascii", errors="replace")
            why = f"the dead letter left out {what} ({size} bytes) to fit the size limit"
            return NotReplayable(reason, why, count)
    if count is None:
        why = f"its {HEADER_REPLAY_COUNT} header is not one count; it was not set by a replay"
        return NotReplayable(SkipReason.BAD_REPLAY_COUNT, why, None)
    if count >= MAX_REPLAYS:
        why = f"replayed {count} times already (at most {MAX_REPLAYS})"
        return NotReplayable(SkipReason.REPLAY_BOUND, why, count)
    original_id = _original_id(headers)
    if original_id is None:
        why = f"its {HEADER_ID} is missing, repeated or malformed: a result could not be joined"
        return NotReplayable(SkipReason.BAD_ID, why, count)
    kept = [(name, raw) for name, raw in headers if name.lower() not in _REPLACED]
    kept += [
        (HEADER_ID, original_id.encode("utf-8")),
        (HEADER_REPLAY_COUNT, str(count + 1).encode("ascii")),
    ]
    return Replay(key=key, value=value, headers=kept, id=original_id, count=count + 1)

"""Requests: one consumed record turned into a validated ``Request`` (DESIGN.md §3).

Key = the line id; value = the encoded image. Of the known headers (names matched
case-insensitively) only ``memkd-id`` can cost an inspection: a malformed or repeated one is
``bad-header``, because the id is how a result is joined back to its image. The optional
metadata never does: a ``traceparent`` or ``memkd-sent-at`` that is malformed or repeated is
passed through unchanged and otherwise ignored (W3C trace context says a malformed traceparent is
ignored; a time that cannot be read falls back to the record's timestamp), and is listed in
``Request.ignored_headers`` so the worker can warn and count. Every other header is kept in
order and passed through unchanged.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from memkd_stream.contract.codes import DeadLetterCode
from memkd_stream.contract.errors import BadLineId, BadRequest
from memkd_stream.contract.headers import (
    HEADER_ID,
    HEADER_SENT_AT,
    HEADER_TRACEPARENT,
    KNOWN_REQUEST_HEADERS,
    MAX_ID_BYTES,
    Headers,
)
from memkd_stream.contract.line_id import validate_line_id

__all__ = ["Request", "Source", "parse_id", "parse_request"]

T = TypeVar("T")

_SENT_AT_RE = re.compile(r"[0-9]{1,16}")
# W3C Trace Context level 1: version-traceid-parentid-flags, lowercase hex. Future versions may
# append fields after a dash; version ff is forbidden; all-zero ids are invalid.
_TRACEPARENT_RE = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-(?P<parent>[0-9a-f]{16})-[0-9a-f]{2}"
    r"(?P<rest>-.*)?"
)


@dataclass(frozen=True)
class Source:
    """Where a record came from: its topic, partition and offset."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


@dataclass(frozen=True)
class Request:
    """A validated inspection request.

    ``received_at`` is wall-clock seconds since the epoch when the record was parsed (comparable
    with ``sent_at_ms``); ``headers_passthrough`` are the headers passed on unchanged, in record
    order (unknown ones and ignored optional ones); ``ignored_headers`` names the optional known
    headers that were malformed or repeated; ``timestamp_ms`` is the record's own timestamp.
    """

    line: str
    id: str
    value: bytes = field(repr=False)
    headers_passthrough: Headers
    sent_at_ms: int | None
    traceparent: str | None
    source: Source
    received_at: float
    ignored_headers: tuple[str, ...] = ()
    timestamp_ms: int | None = None

    @property
    def sent_at_s(self) -> float:
        """When the image was sent: ``memkd-sent-at``, else the record timestamp, else receipt."""
        if self.sent_at_ms is not None:
            return self.sent_at_ms / 1000.0
        if self.timestamp_ms is not None and self.timestamp_ms > 0:
            return self.timestamp_ms / 1000.0
        return self.received_at


def _bad_header(detail: str) -> BadRequest:
    return BadRequest(detail, code=DeadLetterCode.BAD_HEADER)


def _known(name: str) -> str | None:
    lowered = name.lower()
    return lowered if lowered in KNOWN_REQUEST_HEADERS else None


def _decode_text(name: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad_header(f"header {name!r} is not valid UTF-8") from None


def parse_id(raw: bytes) -> str:
    """The text of a ``memkd-id`` header value; raises ``BadRequest`` (``bad-header``) when it
    cannot be an id (empty, too long, not UTF-8, control characters)."""
    if not raw:
        raise _bad_header(f"header {HEADER_ID!r} is empty")
    if len(raw) > MAX_ID_BYTES:
        raise _bad_header(f"header {HEADER_ID!r} is {len(raw)} bytes; at most {MAX_ID_BYTES}")
    text = _decode_text(HEADER_ID, raw)
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise _bad_header(f"header {HEADER_ID!r} contains control characters")
    return text


def _parse_sent_at(raw: bytes) -> int | None:
    """Milliseconds since the epoch as a decimal integer, else None."""
    text = raw.decode("ascii", errors="replace").strip()
    return int(text) if _SENT_AT_RE.fullmatch(text) else None


def _parse_traceparent(raw: bytes) -> str | None:
    """W3C trace context (version-traceid-parentid-flags), else None."""
    text = raw.decode("ascii", errors="replace").strip()
    match = _TRACEPARENT_RE.fullmatch(text)
    valid = (
        match is not None
        and match["version"] != "ff"
        and match["trace"] != "0" * 32
        and match["parent"] != "0" * 16
        and not (match["version"] == "00" and match["rest"])
    )
    return text if valid else None


def parse_request(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Headers | None,
    *,
    received_at: float | None = None,
    timestamp_ms: int | None = None,
) -> Request:
    """Validate one consumed record and return it as a ``Request``.

    Raises:
        BadRequest: ``bad-header`` for a missing/invalid key or a malformed or repeated
            ``memkd-id``, ``decode-error`` for an empty value.
    """
    source = Source(topic, partition, offset)
    if key is None:
        raise _bad_header("the record has no key; the key must be the line id")
    try:
        line = validate_line_id(key.decode("utf-8"))
    except UnicodeDecodeError:
        raise _bad_header("the record key (the line id) is not valid UTF-8") from None
    except BadLineId as exc:
        raise _bad_header(f"the record key is not a valid line id: {exc}") from None

    request_id: str | None = None
    records = [(name, b"" if raw is None else bytes(raw)) for name, raw in headers or ()]
    for name, raw in records:
        if _known(name) == HEADER_ID:
            if request_id is not None:
                raise _bad_header(f"header {HEADER_ID!r} appears more than once")
            request_id = parse_id(raw)
    sent_at_ms = _optional(records, HEADER_SENT_AT, _parse_sent_at)
    traceparent = _optional(records, HEADER_TRACEPARENT, _parse_traceparent)
    used = {HEADER_ID}
    if sent_at_ms is not None:
        used.add(HEADER_SENT_AT)
    if traceparent is not None:
        used.add(HEADER_TRACEPARENT)
    # Everything not used is passed on unchanged, in record order.
    passthrough = [(name, raw) for name, raw in records if _known(name) not in used]
    ignored = tuple(
        name
        for name in (HEADER_SENT_AT, HEADER_TRACEPARENT)
        if any(_known(n) == name for n, _ in passthrough)
    )

    if not value:
        raise BadRequest(
            "the record value is empty; it must be an encoded image",
            code=DeadLetterCode.DECODE_ERROR,
        )
    return Request(
        line=line,
        id=request_id if request_id is not None else str(source),
        value=bytes(value),
        headers_passthrough=passthrough,
        sent_at_ms=sent_at_ms,
        traceparent=traceparent,
        source=source,
        received_at=time.time() if received_at is None else received_at,
        ignored_headers=ignored,
        timestamp_ms=timestamp_ms,
    )


def _optional(records: Headers, name: str, parse: Callable[[bytes], T | None]) -> T | None:
    """The value of an optional known header when it appears exactly once and parses."""
    found = [raw for header, raw in records if _known(header) == name]
    return parse(found[0]) if len(found) == 1 else None

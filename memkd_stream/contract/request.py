"""Requests: one consumed record turned into a validated ``Request`` (DESIGN.md §3).

Key = the line id; value = the encoded image; headers ``memkd-id``, ``memkd-sent-at`` and
``traceparent`` are known (names matched case-insensitively), and a malformed or repeated known
header is ``bad-header``. Every other header is kept in order and passed through unchanged.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from memkd_stream.contract.codes import DeadLetterCode
from memkd_stream.contract.errors import BadLineId, BadRequest
from memkd_stream.contract.headers import (
    HEADER_ID,
    HEADER_SENT_AT,
    KNOWN_REQUEST_HEADERS,
    MAX_ID_BYTES,
    Headers,
)
from memkd_stream.contract.line_id import validate_line_id

__all__ = ["Request", "Source", "parse_request"]

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
    with ``sent_at_ms``); ``headers_passthrough`` are the unknown headers, in record order.
    """

    line: str
    id: str
    value: bytes = field(repr=False)
    headers_passthrough: Headers
    sent_at_ms: int | None
    traceparent: str | None
    source: Source
    received_at: float


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


def _parse_id(raw: bytes) -> str:
    if not raw:
        raise _bad_header(f"header {HEADER_ID!r} is empty")
    if len(raw) > MAX_ID_BYTES:
        raise _bad_header(f"header {HEADER_ID!r} is {len(raw)} bytes; at most {MAX_ID_BYTES}")
    text = _decode_text(HEADER_ID, raw)
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise _bad_header(f"header {HEADER_ID!r} contains control characters")
    return text


def _parse_sent_at(raw: bytes) -> int:
    text = raw.decode("ascii", errors="replace").strip()
    if not _SENT_AT_RE.fullmatch(text):
        raise _bad_header(
            f"header {HEADER_SENT_AT!r} must be milliseconds since the epoch as a decimal "
            f"integer, got {text[:40]!r}"
        )
    return int(text)


def _parse_traceparent(raw: bytes) -> str:
    text = raw.decode("ascii", errors="replace").strip()
    match = _TRACEPARENT_RE.fullmatch(text)
    valid = (
        match is not None
        and match["version"] != "ff"
        and match["trace"] != "0" * 32
        and match["parent"] != "0" * 16
        and not (match["version"] == "00" and match["rest"])
    )
    if not valid:
        raise _bad_header(
            "header 'traceparent' is not W3C trace context "
            f"(version-traceid-parentid-flags), got {text[:80]!r}"
        )
    return text


def parse_request(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Headers | None,
    *,
    received_at: float | None = None,
) -> Request:
    """Validate one consumed record and return it as a ``Request``.

    Raises:
        BadRequest: ``bad-header`` for a missing/invalid key or a malformed known header,
            ``decode-error`` for an empty value.
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
    sent_at_ms: int | None = None
    traceparent: str | None = None
    seen: set[str] = set()
    passthrough: Headers = []
    for name, raw in headers or ():
        raw_bytes = b"" if raw is None else bytes(raw)
        known = _known(name)
        if known is None:
            passthrough.append((name, raw_bytes))
            continue
        if known in seen:
            raise _bad_header(f"header {known!r} appears more than once")
        seen.add(known)
        if known == HEADER_ID:
            request_id = _parse_id(raw_bytes)
        elif known == HEADER_SENT_AT:
            sent_at_ms = _parse_sent_at(raw_bytes)
        else:
            traceparent = _parse_traceparent(raw_bytes)

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
    )

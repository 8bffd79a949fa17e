"""The Kafka wire format of memkd-stream (DESIGN.md §3, a public contract).

Three shapes cross the broker: a request (key = line id, value = raw image bytes, optional
headers), a result (key = line id, value = UTF-8 JSON) and a dead letter (the request's key, value
and headers plus the reason). This module turns raw records into validated ``Request`` objects,
renders result JSON byte-exact to the contract, and builds dead-letter records. It does no I/O.

Headers. ``memkd-id``, ``memkd-sent-at`` and ``traceparent`` are the known request headers (names
matched case-insensitively); a malformed or repeated known header is a ``bad-header``. Every other
header is kept in order and passed through unchanged. Results are Kafka records too, so the
request's headers travel as the *Kafka headers of the result record* (``result_headers``): the
passed-through ones, then ``memkd-id`` (the effective id), ``memkd-sent-at`` and ``traceparent``
when the request had them. The result JSON itself has exactly the keys of §3, no headers.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
from dataclasses import dataclass, field

from memkd_stream.contract.line_id import validate_line_id
from memkd_stream.errors import MemkdStreamError

__all__ = [
    "ERROR_CODES",
    "HEADER_ERROR",
    "HEADER_ERROR_DETAIL",
    "HEADER_ID",
    "HEADER_SENT_AT",
    "HEADER_SOURCE",
    "HEADER_TRACEPARENT",
    "HEADER_VALUE_DROPPED",
    "MAX_DETAIL_BYTES",
    "MAX_ID_BYTES",
    "RESULT_SCHEMA",
    "BadRequest",
    "DeadLetter",
    "Request",
    "Source",
    "dead_letter",
    "encode_result",
    "parse_request",
    "result_headers",
]

RESULT_SCHEMA = 1
ERROR_CODES = (
    "decode-error",
    "image-too-large",
    "unknown-line",
    "line-unavailable",
    "bad-header",
    "model-error",
)

HEADER_ID = "memkd-id"
HEADER_SENT_AT = "memkd-sent-at"
HEADER_TRACEPARENT = "traceparent"
HEADER_ERROR = "memkd-error"
HEADER_ERROR_DETAIL = "memkd-error-detail"
HEADER_SOURCE = "memkd-source"
HEADER_VALUE_DROPPED = "memkd-value-dropped"

MAX_ID_BYTES = 256
# A detail is for a human reading the DLQ; cap it so a pathological message cannot bloat records.
MAX_DETAIL_BYTES = 1024

_KNOWN_HEADERS = (HEADER_ID, HEADER_SENT_AT, HEADER_TRACEPARENT)
_DLQ_HEADERS = (HEADER_ERROR, HEADER_ERROR_DETAIL, HEADER_SOURCE, HEADER_VALUE_DROPPED)
_SENT_AT_RE = re.compile(r"[0-9]{1,16}")
# W3C Trace Context level 1: version-traceid-parentid-flags, lowercase hex. Future versions may
# append fields after a dash; version ff is forbidden; all-zero ids are invalid.
_TRACEPARENT_RE = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-(?P<parent>[0-9a-f]{16})-[0-9a-f]{2}"
    r"(?P<rest>-.*)?"
)

Headers = list[tuple[str, bytes]]


class BadRequest(MemkdStreamError):
    """A record that cannot become a request; ``code`` is one of ``ERROR_CODES``."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(code, detail)
        self.detail = detail


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


@dataclass(frozen=True)
class DeadLetter:
    """A record for the dead-letter topic; ``value`` is None when it was too large to re-publish."""

    key: bytes | None
    value: bytes | None = field(repr=False)
    headers: Headers


def _known(name: str) -> str | None:
    lowered = name.lower()
    return lowered if lowered in _KNOWN_HEADERS else None


def _decode_text(name: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("bad-header", f"header {name!r} is not valid UTF-8") from None


def _parse_id(raw: bytes) -> str:
    if not raw:
        raise BadRequest("bad-header", f"header {HEADER_ID!r} is empty")
    if len(raw) > MAX_ID_BYTES:
        raise BadRequest(
            "bad-header", f"header {HEADER_ID!r} is {len(raw)} bytes; at most {MAX_ID_BYTES}"
        )
    text = _decode_text(HEADER_ID, raw)
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise BadRequest("bad-header", f"header {HEADER_ID!r} contains control characters")
    return text


def _parse_sent_at(raw: bytes) -> int:
    text = raw.decode("ascii", errors="replace").strip()
    if not _SENT_AT_RE.fullmatch(text):
        raise BadRequest(
            "bad-header",
            f"header {HEADER_SENT_AT!r} must be milliseconds since the epoch as a decimal "
            f"integer, got {text[:40]!r}",
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
        raise BadRequest(
            "bad-header",
            f"header {HEADER_TRACEPARENT!r} is not W3C trace context "
            f"(version-traceid-parentid-flags), got {text[:80]!r}",
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
        raise BadRequest("bad-header", "the record has no key; the key must be the line id")
    try:
        line = validate_line_id(key.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("bad-header", "the record key (the line id) is not valid UTF-8") from None
    except MemkdStreamError as exc:
        raise BadRequest("bad-header", f"the record key is not a valid line id: {exc}") from None

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
            raise BadRequest("bad-header", f"header {known!r} appears more than once")
        seen.add(known)
        if known == HEADER_ID:
            request_id = _parse_id(raw_bytes)
        elif known == HEADER_SENT_AT:
            sent_at_ms = _parse_sent_at(raw_bytes)
        else:
            traceparent = _parse_traceparent(raw_bytes)

    if not value:
        raise BadRequest("decode-error", "the record value is empty; it must be an encoded image")
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


def _finite(name: str, value: float) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} is not a finite number: {number}")
    return number


def encode_result(
    request: Request,
    *,
    model_version: str,
    score: float,
    threshold: float,
    image_hw: tuple[int, int],
    mask_png: bytes,
    mask_hw: tuple[int, int],
    timing_ms: dict[str, float],
    worker: str,
) -> bytes:
    """Render the result JSON of DESIGN.md §3 (keys and nesting exactly as the contract).

    Raises:
        ValueError: the score or threshold is not finite (the caller dead-letters as model-error).
    """
    score = _finite("score", score)
    threshold = _finite("threshold", threshold)
    document = {
        "schema": RESULT_SCHEMA,
        "id": request.id,
        "line": request.line,
        "model_version": model_version,
        "score": score,
        "threshold": threshold,
        "anomalous": score >= threshold,
        "image": {"height": int(image_hw[0]), "width": int(image_hw[1])},
        "mask": {
            "format": "png",
            "encoding": "base64",
            "height": int(mask_hw[0]),
            "width": int(mask_hw[1]),
            "data": base64.b64encode(mask_png).decode("ascii"),
        },
        "source": {
            "topic": request.source.topic,
            "partition": request.source.partition,
            "offset": request.source.offset,
        },
        "timing_ms": {
            name: round(_finite(f"timing_ms.{name}", timing_ms[name]), 3)
            for name in ("queue", "infer", "total")
        },
        "worker": worker,
    }
    return json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(
        "utf-8"
    )


def result_headers(request: Request) -> Headers:
    """Kafka headers for the result record: the request's pass-through headers, then the known
    ones (``memkd-id`` always, ``memkd-sent-at`` and ``traceparent`` when the request had them)."""
    headers = list(request.headers_passthrough)
    headers.append((HEADER_ID, request.id.encode("utf-8")))
    if request.sent_at_ms is not None:
        headers.append((HEADER_SENT_AT, str(request.sent_at_ms).encode("ascii")))
    if request.traceparent is not None:
        headers.append((HEADER_TRACEPARENT, request.traceparent.encode("ascii")))
    return headers


def _truncate_utf8(text: str, limit: int) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return raw
    return raw[: limit - 3].decode("utf-8", errors="ignore").encode("utf-8") + b"..."


def dead_letter(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Headers | None,
    code: str,
    detail: str,
    max_value_bytes: int,
) -> DeadLetter:
    """Build the dead-letter record for a consumed record that could not be scored.

    The original key, value and headers are kept; any ``memkd-error*``/``memkd-source``/
    ``memkd-value-dropped`` headers already on the record (a re-driven dead letter) are replaced
    by this failure's. A value larger than ``max_value_bytes`` is dropped and its size recorded in
    ``memkd-value-dropped``.
    """
    if code not in ERROR_CODES:
        raise ValueError(f"unknown dead-letter code {code!r}; expected one of {ERROR_CODES}")
    kept: Headers = [
        (name, b"" if raw is None else bytes(raw))
        for name, raw in headers or ()
        if name.lower() not in _DLQ_HEADERS
    ]
    kept.append((HEADER_ERROR, code.encode("ascii")))
    kept.append((HEADER_ERROR_DETAIL, _truncate_utf8(detail, MAX_DETAIL_BYTES)))
    kept.append((HEADER_SOURCE, f"{topic}:{partition}:{offset}".encode()))
    out_value = None if value is None else bytes(value)
    if out_value is not None and len(out_value) > max_value_bytes:
        kept.append((HEADER_VALUE_DROPPED, str(len(out_value)).encode("ascii")))
        out_value = None
    return DeadLetter(key=key, value=out_value, headers=kept)

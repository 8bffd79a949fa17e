"""Dead letters: a consumed record that could not be scored, with the reason (DESIGN.md §3).

The original key, value and headers are kept and ``memkd-error`` (a ``DeadLetterCode``),
``memkd-error-detail`` and ``memkd-source`` are added; whatever a sender sent, the record fits the
size limit (``contract.sizes``), so no record can make its own dead letter undeliverable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from memkd_stream.contract.codes import DeadLetterCode
from memkd_stream.contract.headers import (
    DLQ_HEADERS,
    HEADER_ERROR,
    HEADER_ERROR_DETAIL,
    HEADER_KEY_DROPPED,
    HEADER_SOURCE,
    HEADER_VALUE_DROPPED,
    MAX_DETAIL_BYTES,
    Headers,
)
from memkd_stream.contract.sizes import dropped_header_size, fit_headers, record_size

__all__ = ["DeadLetter", "dead_letter"]


@dataclass(frozen=True)
class DeadLetter:
    """A record for the dead-letter topic; ``value`` is None when it was too large to re-publish."""

    key: bytes | None
    value: bytes | None = field(repr=False)
    headers: Headers


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
    code: DeadLetterCode,
    detail: str,
    max_record_bytes: int,
) -> DeadLetter:
    """Build the dead-letter record for a consumed record that could not be scored.

    Any ``memkd-error*``/``memkd-source``/``memkd-*-dropped`` headers already on the record (a
    re-driven dead letter) are replaced by this failure's. The record always fits
    ``max_record_bytes``: what does not fit is left out, in this order, and said so: the value
    (``memkd-value-dropped: <bytes>``), then the sender's headers, largest first
    (``memkd-headers-dropped: <bytes>``), then the key (``memkd-key-dropped: <bytes>``). A
    record with neither key nor value gets an empty key (Kafka needs one of the two).

    Raises:
        ValueError: ``code`` is not a ``DeadLetterCode``.
    """
    try:
        code = DeadLetterCode(code)
    except ValueError:
        known = ", ".join(c.value for c in DeadLetterCode)
        raise ValueError(f"unknown dead-letter code {code!r}; expected one of {known}") from None
    original: Headers = [
        (name, b"" if raw is None else bytes(raw))
        for name, raw in headers or ()
        if name.lower() not in DLQ_HEADERS
    ]
    fixed: Headers = [
        (HEADER_ERROR, code.value.encode("ascii")),
        (HEADER_ERROR_DETAIL, _truncate_utf8(detail, MAX_DETAIL_BYTES)),
        (HEADER_SOURCE, f"{topic}:{partition}:{offset}".encode()),
    ]
    out_value = None if value is None else bytes(value)
    if out_value is not None and record_size(key, out_value, original + fixed) > max_record_bytes:
        fixed.append((HEADER_VALUE_DROPPED, str(len(out_value)).encode("ascii")))
        out_value = None
    reserve = dropped_header_size(HEADER_KEY_DROPPED)
    kept = fit_headers(key, out_value, original, fixed, max_record_bytes - reserve)
    if key is not None and record_size(key, out_value, kept) > max_record_bytes:
        kept.append((HEADER_KEY_DROPPED, str(len(key)).encode("ascii")))
        key = None
    if key is None and out_value is None:
        key = b""
    return DeadLetter(key=key, value=out_value, headers=kept)

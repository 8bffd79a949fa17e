"""Dead letters: a consumed record that could not be scored, with the reason (DESIGN.md §3).

The original key, value and headers are kept and ``memkd-error`` (a ``DeadLetterCode``),
``memkd-error-detail`` and ``memkd-source`` are added.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from memkd_stream.contract.codes import DeadLetterCode
from memkd_stream.contract.headers import (
    DLQ_HEADERS,
    HEADER_ERROR,
    HEADER_ERROR_DETAIL,
    HEADER_SOURCE,
    HEADER_VALUE_DROPPED,
    MAX_DETAIL_BYTES,
    Headers,
)

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
    max_value_bytes: int,
) -> DeadLetter:
    """Build the dead-letter record for a consumed record that could not be scored.

    Any ``memkd-error*``/``memkd-source``/``memkd-value-dropped`` headers already on the record
    (a re-driven dead letter) are replaced by this failure's. A value larger than
    ``max_value_bytes`` is dropped and its size recorded in ``memkd-value-dropped``.

    Raises:
        ValueError: ``code`` is not a ``DeadLetterCode``.
    """
    try:
        code = DeadLetterCode(code)
    except ValueError:
        known = ", ".join(c.value for c in DeadLetterCode)
        raise ValueError(f"unknown dead-letter code {code!r}; expected one of {known}") from None
    kept: Headers = [
        (name, b"" if raw is None else bytes(raw))
        for name, raw in headers or ()
        if name.lower() not in DLQ_HEADERS
    ]
    kept.append((HEADER_ERROR, code.value.encode("ascii")))
    kept.append((HEADER_ERROR_DETAIL, _truncate_utf8(detail, MAX_DETAIL_BYTES)))
    kept.append((HEADER_SOURCE, f"{topic}:{partition}:{offset}".encode()))
    out_value = None if value is None else bytes(value)
    if out_value is not None and len(out_value) > max_value_bytes:
        kept.append((HEADER_VALUE_DROPPED, str(len(out_value)).encode("ascii")))
        out_value = None
    return DeadLetter(key=key, value=out_value, headers=kept)

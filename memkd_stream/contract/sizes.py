"""How many bytes a record takes on the wire, and trimming an output record to a byte budget.

Every record the worker produces must fit ``kafka.max_message_bytes`` (the producer's
``max_request_size`` and the topics' ``max.message.bytes``), or the client refuses it. A sender
controls most of what goes back out (a dead letter repeats its key, value and headers; a result
repeats its pass-through headers), so the budget is computed from the actual record, never from
a fixed allowance. The size is the upper bound Kafka's record format v2 gives for a record alone
in its batch (batch header + per-record overhead + the key, value and header bytes with their
varint lengths), the same bound kafka-python checks before it sends.
"""

from __future__ import annotations

from memkd_stream.contract.headers import HEADER_HEADERS_DROPPED, Headers

__all__ = ["dropped_header_size", "fit_headers", "record_size"]

# Record batch header (61 bytes) + the most a record's own framing can take (attributes, offset
# and timestamp deltas, length varint: 21 bytes). Kafka protocol, record format v2.
_BATCH_HEADER = 61
_RECORD_OVERHEAD = 21
# A count written as the value of a "dropped" header takes at most this many digits.
_DROPPED_VALUE_DIGITS = 12
# The header-count varint may grow by a byte or two as headers are kept.
_COUNT_SLACK = 2


def _varint_size(value: int) -> int:
    """Bytes of a zig-zag varint (Kafka's encoding of lengths in record format v2)."""
    zigzag = (value << 1) ^ (value >> 63)
    size = 1
    while zigzag >= 0x80:
        zigzag >>= 7
        size += 1
    return size


def _field_size(data: bytes | None) -> int:
    return 1 if data is None else _varint_size(len(data)) + len(data)


def record_size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    """Upper bound of the bytes one record takes on the wire (format v2, alone in a batch)."""
    size = _BATCH_HEADER + _RECORD_OVERHEAD + _field_size(key) + _field_size(value)
    return size + _varint_size(len(headers)) + sum(_header_size(h) for h in headers)


def dropped_header_size(name: str) -> int:
    """What a ``<name>: <count>`` header adds to a record."""
    return _field_size(name.encode("utf-8")) + _field_size(b"9" * _DROPPED_VALUE_DIGITS) + 1


def fit_headers(
    key: bytes | None,
    value: bytes | None,
    droppable: Headers,
    fixed: Headers,
    max_bytes: int,
) -> Headers:
    """``droppable + fixed``, after dropping droppable headers until the record fits
    ``max_bytes`` (the largest go; as many as fit stay). When anything was dropped,
    ``memkd-headers-dropped: <bytes dropped>`` is appended. The caller makes sure ``fixed``
    alone fits (it is the worker's own, small)."""
    if record_size(key, value, droppable + fixed) <= max_bytes:
        return droppable + fixed
    used = record_size(key, value, fixed) + dropped_header_size(HEADER_HEADERS_DROPPED)
    kept: list[int] = []
    for index in sorted(range(len(droppable)), key=lambda i: _header_size(droppable[i])):
        size = _header_size(droppable[index])
        if used + size + _COUNT_SLACK > max_bytes:
            break
        kept.append(index)
        used += size

    def build() -> Headers:
        chosen = set(kept)
        dropped = sum(_raw_size(h) for i, h in enumerate(droppable) if i not in chosen)
        out = [h for i, h in enumerate(droppable) if i in chosen] + fixed
        return [*out, (HEADER_HEADERS_DROPPED, str(dropped).encode("ascii"))]

    out = build()
    while kept and record_size(key, value, out) > max_bytes:  # varint rounding, rarely
        kept.pop()
        out = build()
    return out


def _raw_size(header: tuple[str, bytes]) -> int:
    return len(header[0].encode("utf-8")) + len(header[1])


def _header_size(header: tuple[str, bytes]) -> int:
    name, raw = header
    return _field_size(name.encode("utf-8")) + _field_size(raw)

"""Kafka header names of the wire contract and the limits on their values (DESIGN.md §3).

Known request headers are matched case-insensitively; every other request header is passed
through to the result unchanged. The dead-letter headers are added by the worker.
"""

from __future__ import annotations

__all__ = [
    "DLQ_HEADERS",
    "HEADER_ERROR",
    "HEADER_ERROR_DETAIL",
    "HEADER_HEADERS_DROPPED",
    "HEADER_ID",
    "HEADER_KEY_DROPPED",
    "HEADER_REPLAY_COUNT",
    "HEADER_SENT_AT",
    "HEADER_SOURCE",
    "HEADER_TRACEPARENT",
    "HEADER_VALUE_DROPPED",
    "KNOWN_REQUEST_HEADERS",
    "MAX_DETAIL_BYTES",
    "MAX_ID_BYTES",
    "Headers",
]

Headers = list[tuple[str, bytes]]

# request headers (all optional)
HEADER_ID = "memkd-id"
HEADER_SENT_AT = "memkd-sent-at"
HEADER_TRACEPARENT = "traceparent"
KNOWN_REQUEST_HEADERS = (HEADER_ID, HEADER_SENT_AT, HEADER_TRACEPARENT)

# dead-letter headers
HEADER_ERROR = "memkd-error"
HEADER_ERROR_DETAIL = "memkd-error-detail"
HEADER_SOURCE = "memkd-source"
HEADER_VALUE_DROPPED = "memkd-value-dropped"
HEADER_KEY_DROPPED = "memkd-key-dropped"
# on results and dead letters: the bytes of sender headers left out to fit the size limit
HEADER_HEADERS_DROPPED = "memkd-headers-dropped"
DLQ_HEADERS = (
    HEADER_ERROR,
    HEADER_ERROR_DETAIL,
    HEADER_SOURCE,
    HEADER_VALUE_DROPPED,
    HEADER_KEY_DROPPED,
    HEADER_HEADERS_DROPPED,
)

# set by `memkd-stream dlq replay` on a re-produced dead letter (1, 2, ...); to the worker an
# ordinary pass-through header, so it travels on to the result or the next dead letter
HEADER_REPLAY_COUNT = "memkd-replay-count"

MAX_ID_BYTES = 256
# A detail is for a human reading the DLQ; cap it so a pathological message cannot bloat records.
MAX_DETAIL_BYTES = 1024

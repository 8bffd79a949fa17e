"""Dead-letter codes: why a record got no result (DESIGN.md §3, a public contract).

A consumer of the dead-letter topic matches on these strings, so a code is never renamed; new
codes are added only as DESIGN.md §3 allows.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["DeadLetterCode"]


class DeadLetterCode(StrEnum):
    """The value of a dead letter's ``memkd-error`` header."""

    DECODE_ERROR = "decode-error"
    IMAGE_TOO_LARGE = "image-too-large"
    UNKNOWN_LINE = "unknown-line"
    LINE_UNAVAILABLE = "line-unavailable"
    BAD_HEADER = "bad-header"
    MODEL_ERROR = "model-error"
    # The Kafka client could not parse the record (a compression codec it lacks, a corrupt
    # batch, a header name that is not UTF-8); its key, value and headers are not recovered.
    UNREADABLE_RECORD = "unreadable-record"
    # Older than worker.max_age_ms (plus the clock-skew margin) when it would have been scored,
    # on a line whose late policy says a late verdict is useless (DESIGN.md §3, late images).
    STALE = "stale"

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

"""Errors of the wire contract: a record that is not a valid request, a line id that is not one."""

from __future__ import annotations

from memkd_stream.contract.codes import DeadLetterCode
from memkd_stream.errors import ErrorCode, MemkdStreamError

__all__ = ["BadLineId", "BadRequest"]


class BadRequest(MemkdStreamError):
    """A record that cannot become a request; ``code`` is its ``DeadLetterCode``."""

    code: str = DeadLetterCode.BAD_HEADER


class BadLineId(MemkdStreamError, ValueError):
    """A line id that does not match ``contract.line_id.LINE_ID_RE``."""

    code: str = ErrorCode.BAD_LINE_ID

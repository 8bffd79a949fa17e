"""Errors of talking to Kafka: no broker answered, or a topic is missing.

kafka-python reports a dead broker and a missing topic alike (a timeout), so commands check
the topic list first and say which it is.
"""

from __future__ import annotations

import sys

from memkd_stream.errors import ErrorCode, MemkdStreamError

__all__ = ["KafkaUnavailable", "TopicMissing", "is_unreachable", "unavailable"]

# kafka-python's "no broker answered" errors. NoBrokersAvailable is gone from kafka-python 3.x
# (a dead broker is a KafkaTimeoutError there); it is kept for clients that still raise it.
_UNREACHABLE = ("NoBrokersAvailable", "KafkaTimeoutError", "KafkaConnectionError")


class KafkaUnavailable(MemkdStreamError):
    """No broker answered within the connect timeout."""

    code: str = ErrorCode.KAFKA_UNAVAILABLE


class TopicMissing(MemkdStreamError):
    """The topic a command reads or writes does not exist on the broker."""

    code: str = ErrorCode.TOPIC_MISSING


def is_unreachable(exc: BaseException) -> bool:
    """kafka-python's "no broker answered" errors (a down or misnamed broker), not its bugs.

    Never imports kafka-python: if it was never imported, ``exc`` cannot be one of its errors
    (so ``memkd-stream --help`` stays fast).
    """
    errors = sys.modules.get("kafka.errors")
    if errors is None:
        return False
    kinds = tuple(getattr(errors, name) for name in _UNREACHABLE if hasattr(errors, name))
    return isinstance(exc, kinds)


def unavailable(bootstrap: str, timeout_s: float, exc: BaseException) -> KafkaUnavailable:
    """The one-line error for a broker that did not answer within ``timeout_s``."""
    detail = str(exc).removeprefix(f"{type(exc).__name__}: ") or type(exc).__name__
    return KafkaUnavailable(
        f"Kafka at {bootstrap} did not answer within {timeout_s:g} s ({detail}); "
        "is the broker up and MEMKD_KAFKA__BOOTSTRAP_SERVERS right?"
    )

"""Errors of talking to Kafka: no broker answered, or a topic is missing.

kafka-python reports a dead broker and a missing topic alike (a timeout), so commands check
the topic list first and say which it is.
"""

from __future__ import annotations

import sys

from memkd_stream.errors import ErrorCode, MemkdStreamError

__all__ = [
    "KafkaRefused",
    "KafkaUnavailable",
    "TopicMissing",
    "connect_failure",
    "is_refused",
    "is_unreachable",
    "refused",
    "unavailable",
]

# kafka-python's "the broker answered and refused us" errors: retrying cannot help, the settings
# (credentials, mechanism, ACLs) must change.
_REFUSED = (
    "SaslAuthenticationFailedError",
    "UnsupportedSaslMechanismError",
    "IllegalSaslStateError",
    "AuthorizationError",
    "KafkaConfigurationError",
)
# kafka-python's "no broker answered" errors. NoBrokersAvailable is gone from kafka-python 3.x
# (a dead broker is a KafkaTimeoutError there); it is kept for clients that still raise it.
_UNREACHABLE = ("NoBrokersAvailable", "KafkaTimeoutError", "KafkaConnectionError")


class KafkaUnavailable(MemkdStreamError):
    """No broker answered within the connect timeout."""

    code: str = ErrorCode.KAFKA_UNAVAILABLE


class KafkaRefused(MemkdStreamError):
    """The broker refused our credentials, certificate or rights: a settings problem."""

    code: str = ErrorCode.KAFKA_REFUSED


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


def is_refused(exc: BaseException) -> bool:
    """A refusal that settings must fix (credentials, certificate, rights), anywhere in the
    chain of causes: an SSL or SASL failure surfaces wrapped in a connection error."""
    import ssl

    errors = sys.modules.get("kafka.errors")
    kinds: tuple[type[BaseException], ...] = (ssl.SSLError, ssl.CertificateError)
    if errors is not None:
        kinds += tuple(getattr(errors, name) for name in _REFUSED if hasattr(errors, name))
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kinds):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def refused(bootstrap: str, exc: BaseException) -> KafkaRefused:
    """The one-line error for a broker that refused our credentials or certificate."""
    detail = str(exc).removeprefix(f"{type(exc).__name__}: ") or type(exc).__name__
    return KafkaRefused(
        f"Kafka at {bootstrap} refused the connection ({type(exc).__name__}: {detail}); check "
        "MEMKD_KAFKA__SECURITY_PROTOCOL, SASL user and password, and the CA file"
    )


def connect_failure(
    bootstrap: str, timeout_s: float, exc: BaseException
) -> MemkdStreamError | None:
    """What a failed connect means: refused credentials or TLS (the settings must change), a
    broker that does not answer, or None when ``exc`` is about neither.

    kafka-python gives a wrong password or an unusable certificate the same bootstrap timeout as
    a dead broker; a broker that accepts a TCP connection but not our client is the former.
    """
    from memkd_stream.broker.probe import tcp_reachable

    if is_refused(exc):
        return refused(bootstrap, exc)
    if is_unreachable(exc) and tcp_reachable(bootstrap, min(2.0, timeout_s)):
        return KafkaRefused(
            f"Kafka at {bootstrap} accepts connections but our client could not log in or "
            f"complete TLS within {timeout_s:g} s; check that MEMKD_KAFKA__SECURITY_PROTOCOL "
            "matches the listener, the SASL user and password, and the CA file"
        )
    return unavailable(bootstrap, timeout_s, exc) if is_unreachable(exc) else None


def unavailable(bootstrap: str, timeout_s: float, exc: BaseException) -> KafkaUnavailable:
    """The one-line error for a broker that did not answer within ``timeout_s``."""
    detail = str(exc).removeprefix(f"{type(exc).__name__}: ") or type(exc).__name__
    return KafkaUnavailable(
        f"Kafka at {bootstrap} did not answer within {timeout_s:g} s ({detail}); "
        "is the broker up and MEMKD_KAFKA__BOOTSTRAP_SERVERS right?"
    )

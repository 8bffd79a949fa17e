"""The service's error base, its stable error codes, and the exit codes of both programs.

Every failure a user or an operator can act on is a :class:`MemkdStreamError`: a stable ``code``
(logs, metrics and ``--json`` output carry it) and a sentence a plant engineer can act on
(``str(exc)``). Callers dispatch on the exception *type*, never on the code's text. Subclasses
live with the package that raises them (``lines.errors``, ``broker.errors``,
``contract.errors``, ``worker.engine``); only the base and the code tables live here.

The model library has the same shape (``memkd.errors.MemKDError(message, *, code=None)``) with
its own codes (set by each of its error classes), because it never imports the service.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

__all__ = ["ErrorCode", "ExitCode", "MemkdStreamError"]


class ErrorCode(StrEnum):
    """Stable codes of the service's expected errors (the dead-letter codes of the wire contract
    are ``contract.codes.DeadLetterCode``)."""

    GENERIC = "memkd-stream-error"
    SETTINGS_INVALID = "settings-invalid"
    USAGE = "usage"
    INTERRUPTED = "interrupted"
    FILE_ERROR = "file-error"
    NO_IMAGES = "no-images"
    DATASET_INVALID = "dataset-invalid"
    BAD_LINE_ID = "bad-line-id"
    UNKNOWN_LINE = "unknown-line"
    UNKNOWN_VERSION = "unknown-version"
    LINE_UNAVAILABLE = "line-unavailable"
    VERSION_ACTIVE = "version-active"
    NO_ROLLBACK_TARGET = "no-rollback-target"
    PARENT_NEEDED = "parent-needed"
    SHADOW_REFUSED = "shadow-refused"
    ACTIVE_CHANGED = "active-changed"
    NOT_ACTIVATED = "not-activated"
    REDIS_UNAVAILABLE = "redis-unavailable"
    ARTIFACT_CHECKSUM = "artifact-checksum"
    ARTIFACT_INVALID = "artifact-invalid"
    ARTIFACT_MISMATCH = "artifact-mismatch"
    KAFKA_UNAVAILABLE = "kafka-unavailable"
    KAFKA_REFUSED = "kafka-refused"
    TOPIC_MISSING = "topic-missing"
    DEVICE_FAULT = "device-fault"


class ExitCode(IntEnum):
    """Exit statuses of ``memkd-stream`` and ``memkd-worker`` (README.md lists them)."""

    OK = 0  # done; the worker drained and stopped after SIGTERM/SIGINT
    # memkd-stream: the command failed (an expected error, one line on stderr);
    # memkd-worker: ended hard (a drain overran its grace period, a fetched record could not be
    # located to skip it, or the consumer loop crashed: a bug)
    FAILED = 1
    # bad arguments or settings, credentials or certificate files the broker refuses; the
    # worker: also a teacher that cannot be loaded
    USAGE = 2
    # memkd-worker: Kafka unreachable, or refusing its offset commits, longer than its budget
    BROKER_UNREACHABLE = 3
    DEVICE_FAULT = 4  # memkd-worker: the device fails every batch (a restart may get a good one)
    # memkd-stream: published, but the activation gate kept the active version (the new one
    # scored worse, or could not be compared); `lines activate` or --force activates it
    NOT_ACTIVATED = 5
    INTERRUPTED = 130  # memkd-stream: Ctrl-C


class MemkdStreamError(Exception):
    """Base class of the service's expected errors.

    ``MemkdStreamError(message, *, code=None)``: the code is the subclass's ``code`` attribute
    unless one is given (errors whose code varies per instance, like a dead letter's).
    """

    code: str = ErrorCode.GENERIC

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        """The human sentence (same as ``str(exc)``)."""
        return str(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={str(self.code)!r}, message={self.message!r})"

"""Errors of the line store (DESIGN.md §5); each names what to do next."""

from __future__ import annotations

from memkd_stream.errors import ErrorCode, MemkdStreamError

__all__ = [
    "ActiveChanged",
    "ArtifactRejected",
    "ChecksumMismatch",
    "NoRollbackTarget",
    "ParentNeeded",
    "ShadowRefused",
    "StoreUnavailable",
    "UnknownLine",
    "UnknownVersion",
    "VersionActive",
]


class UnknownLine(MemkdStreamError):
    """The line has never been published to this Redis."""

    code: str = ErrorCode.UNKNOWN_LINE


class UnknownVersion(MemkdStreamError):
    """The line exists but not this version (never published, or deleted by retention)."""

    code: str = ErrorCode.UNKNOWN_VERSION


class StoreUnavailable(MemkdStreamError):
    """Redis cannot be reached or refuses us (network, TLS, ACL)."""

    code: str = ErrorCode.REDIS_UNAVAILABLE


class ChecksumMismatch(MemkdStreamError):
    """Artifact bytes do not match their recorded sha256 (or a chunk is missing)."""

    code: str = ErrorCode.ARTIFACT_CHECKSUM


class ArtifactRejected(MemkdStreamError):
    """A file offered for publishing is missing or is not a memkd line artifact."""

    code: str = ErrorCode.ARTIFACT_INVALID


class VersionActive(MemkdStreamError):
    """Refused: deleting the version that workers are serving."""

    code: str = ErrorCode.VERSION_ACTIVE


class NoRollbackTarget(MemkdStreamError):
    """Rollback has nothing to go back to (no earlier activation, or it was deleted)."""

    code: str = ErrorCode.NO_ROLLBACK_TARGET


class ParentNeeded(MemkdStreamError):
    """Refused: deleting a full version that a stored delta is composed with."""

    code: str = ErrorCode.PARENT_NEEDED


class ShadowRefused(MemkdStreamError):
    """A version that cannot shadow the active one (itself, or another input)."""

    code: str = ErrorCode.SHADOW_REFUSED


class ActiveChanged(MemkdStreamError):
    """Refused: the active version changed since a new one was compared with it."""

    code: str = ErrorCode.ACTIVE_CHANGED

"""Errors of the MemKD model library.

Every error carries a stable ``code`` (for logs, metrics and dead-letter headers) and a sentence a
plant engineer can act on. Subclasses that belong to one module (``ArtifactError``) live there.
"""

from __future__ import annotations

__all__ = ["ConfigError", "MemKDError", "TeacherWeightsMissing", "UnknownBackbone"]


class MemKDError(Exception):
    """Base class of every error raised by ``memkd``."""

    code: str = "memkd-error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class TeacherWeightsMissing(MemKDError):
    """The weight file of a teacher backbone is not where the settings say."""

    code = "teacher-weights-missing"


class UnknownBackbone(MemKDError):
    """A backbone name that is not in ``memkd.backbones.BACKBONES``."""

    code = "unknown-backbone"


class ConfigError(MemKDError):
    """A model or training setting out of its valid range."""

    code = "config-invalid"

"""The base error of the memkd-stream service.

Every failure a user or an operator can act on is a :class:`MemkdStreamError`: a stable ``code``
(logs, metrics, dead-letter headers, ``--json`` output match on it) and a sentence a plant engineer
can act on (``str(exc)``). Subclasses live in the module that raises them (``UnknownLine`` in
``line_store``, ``BadRequest`` in ``wire``, ``SettingsError`` in ``settings``); only the base
lives here.
"""

from __future__ import annotations

__all__ = ["MemkdStreamError"]


class MemkdStreamError(Exception):
    """Base class of the service's expected errors.

    Two call forms, both used in the package:

    - ``UnknownLine("line A is not known")`` — the code is the subclass's ``code`` attribute;
    - ``BadRequest("bad-header", "the key is not a line id")`` — code given first, then the message
      (for errors whose code varies per instance, like the dead-letter codes).
    """

    code: str = "memkd-stream-error"

    def __init__(self, code_or_message: str, message: str | None = None) -> None:
        if message is None:
            message = code_or_message
        else:
            self.code = code_or_message
        super().__init__(message)

    @property
    def message(self) -> str:
        """The human sentence (same as ``str(exc)``)."""
        return str(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"

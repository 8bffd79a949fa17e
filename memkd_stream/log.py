"""Structured logs for the worker and the CLI (DESIGN.md §6).

JSON lines on stderr in production (``format = "json"``, or ``auto`` when stderr is not a
terminal); readable console lines on a terminal. Library loggers (kafka-python, redis-py) go
through the same renderer, so a pod's log is one JSON line per event whoever wrote it. stdout is
left to the CLI's own output (``--json`` results), never to logs.

Secrets never reach a log line: values under keys that name a secret are masked, ``SecretStr``
prints as ``**********``, and credentials inside URLs are replaced by ``***``.

Nothing happens at import: call :func:`configure_logging` once at program start.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, Protocol, cast

import structlog

__all__ = [
    "LogConfig",
    "Logger",
    "configure_logging",
    "get_logger",
    "redact_secrets",
    "redact_url",
    "register_secret",
]

Logger = structlog.stdlib.BoundLogger


class LogConfig(Protocol):
    """What logging is configured from (``settings.LogSettings``; log sits below settings)."""

    @property
    def level(self) -> str: ...

    @property
    def format(self) -> str: ...


_MASK = "**********"
_SECRET_KEY = re.compile(r"pass(word)?|secret|token|credential|api_?key", re.IGNORECASE)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/\s]*):[^@/\s]+@")
# kafka-python logs every connection at INFO; only its warnings are news to an operator.
_CHATTY_LIBRARIES = ("kafka", "urllib3")


# Secret values the settings hold (passwords): masked wherever they appear in a log line, because
# libraries print them in ways no key name reveals (kafka-python dumps its whole configuration
# at DEBUG). Process-wide, like the logging configuration itself.
_SECRET_VALUES: set[str] = set()
# Shorter values would mask ordinary words; a password that short is not a secret anyway.
_MIN_SECRET_CHARS = 4


def register_secret(value: str | None) -> None:
    """Mask ``value`` in every log line from now on (settings call this for each password)."""
    if value is not None and len(value) >= _MIN_SECRET_CHARS:
        _SECRET_VALUES.add(value)


def redact_url(text: str) -> str:
    """``redis://user:secret@host`` -> ``redis://user:***@host``, for every URL in ``text``."""
    return _URL_CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", text)


def _redact_text(text: str) -> str:
    for secret in sorted(_SECRET_VALUES, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, _MASK)
    return redact_url(text) if "://" in text else text


def redact_secrets(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: mask secret-named keys, registered secret values and URL
    credentials in every value (the event text of library log lines included)."""
    for key, value in event_dict.items():
        if _SECRET_KEY.search(key) and value is not None:
            event_dict[key] = _MASK
        elif isinstance(value, str):
            event_dict[key] = _redact_text(value)
        elif _SECRET_VALUES and value is not None and not isinstance(value, int | float | bool):
            text = str(value)  # what the renderer would print
            redacted = _redact_text(text)
            if redacted != text:
                event_dict[key] = redacted
    return event_dict


def _renderer(fmt: str, stream: Any) -> Any:
    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    if fmt == "console":
        return structlog.dev.ConsoleRenderer(colors=getattr(stream, "isatty", lambda: False)())
    return structlog.processors.JSONRenderer(default=str)


def configure_logging(settings: LogConfig, stream: Any = None) -> None:
    """Route structlog and the standard library's logging to one handler on ``stream``.

    Safe to call again (tests, the CLI's --log-level): the previous handler is replaced.
    """
    stream = sys.stderr if stream is None else stream
    level = logging.getLevelName(settings.level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    renderer = _renderer(settings.format, stream)
    # Tracebacks become a string field before the last redaction pass (an error message may
    # quote a password), for the console too.
    final: list[Any] = [
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        structlog.processors.format_exc_info,
        redact_secrets,
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[*final, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.set_name("memkd")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "memkd"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(level if level <= logging.DEBUG else logging.WARNING)


def get_logger(name: str | None = None) -> Logger:
    """A structlog logger; use keyword fields: ``log.info("scored", line=..., offset=...)``."""
    return cast(Logger, structlog.get_logger(name))

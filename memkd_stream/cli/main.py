"""Parser and dispatch of ``memkd-stream``: global options, sub-commands, exit codes.

Exit codes: 0 done, 1 the command failed (an expected error: one line on stderr, no traceback),
2 usage error (bad arguments or settings), 5 published but not activated (the activation gate
kept the active version: ``cli.gate``), 130 interrupted.

Sub-command modules expose ``register(subparsers)`` and set ``handler`` on their parsers:
``handler(ctx: Context) -> int``. Heavy imports (torch, memkd) happen inside handlers only, so
``--help`` stays fast. The Kafka commands come from ``memkd_stream.cli.stream`` when installed.
"""

from __future__ import annotations

import argparse
import functools
import getpass
import importlib
import logging
import re
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memkd_stream import package_version, prefer_passive_openmp
from memkd_stream.broker.errors import KafkaRefused, is_refused, is_unreachable, refused
from memkd_stream.cli.output import Output
from memkd_stream.contract.errors import BadLineId
from memkd_stream.contract.line_id import validate_line_id
from memkd_stream.errors import ErrorCode, ExitCode, MemkdStreamError

if TYPE_CHECKING:
    from memkd_stream.lines.store import LineStore
    from memkd_stream.settings import Settings

__all__ = [
    "CommandParser",
    "Context",
    "UsageError",
    "build_parser",
    "line_arg",
    "main",
    "whole_number",
]

PROG = "memkd-stream"
_COMMAND_MODULES = ("data", "fit", "eval", "lines")
_OPTIONAL_MODULES = ("stream", "dlq")  # produce / results / topics; dlq replay
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

EPILOG = """\
examples:
  memkd-stream data synth --out data/synth --category grass
  memkd-stream fit --line A --data data/synth/grass --steps 200
  memkd-stream lines show A
  memkd-stream eval --line A --data data/synth/grass --out eval-A
  memkd-stream lines rollback A
  memkd-stream dlq replay --code line-unavailable --since 2h

settings come from MEMKD_* environment variables (e.g. MEMKD_REDIS__URL) and --config FILE.
exit status: 0 done, 1 failed, 2 bad arguments or settings, 5 published but not activated
(the activation gate kept the active version; --force or `lines activate`), 130 interrupted.
"""


@functools.cache
def _common_options() -> argparse.ArgumentParser:
    """Options accepted before or after any sub-command (defaults applied in ``main``)."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("global options")
    group.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="TOML settings file (MEMKD_* environment variables win over it)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the result as one JSON document (for scripts)",
    )
    group.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=argparse.SUPPRESS,
        help="log level (default: the settings' log.level)",
    )
    return parser


class UsageError(MemkdStreamError):
    """Arguments that parse but do not go together (exit 2, like argparse's own errors)."""

    code: str = ErrorCode.USAGE


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser that also accepts the global options (so ``lines list --json`` works)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        parents = list(kwargs.pop("parents", []))
        if _common_options() not in parents:
            parents.append(_common_options())
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        if kwargs.get("description"):
            kwargs["description"] = plain_text(kwargs["description"])
        kwargs["parents"] = parents
        super().__init__(*args, **kwargs)


def plain_text(docstring: str) -> str:
    """A module docstring as --help text: reST roles and literal quotes removed."""
    text = re.sub(r":\w+:`~?(?:[\w.]+\.)?([\w]+)`", r"\1", docstring)
    return text.replace("``", "").strip()


def whole_number(minimum: int, meaning: str = "") -> Callable[[str], int]:
    """argparse type: an integer >= ``minimum``; anything else is a usage error (exit 2) that
    says what was expected (``meaning``, default "a whole number >= minimum")."""
    expected = meaning or f"a whole number >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not {expected}")
        return value

    return parse


def line_arg(text: str) -> str:
    """argparse type for a line id (a bad one is a usage error, exit 2)."""
    try:
        return validate_line_id(text)
    except BadLineId as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class Context:
    """What a handler gets: parsed args, settings, output, and the line store on demand."""

    def __init__(self, args: argparse.Namespace, settings: Settings, out: Output) -> None:
        self.args = args
        self.settings = settings
        self.out = out
        self._store: LineStore | None = None

    @property
    def who(self) -> str:
        """Who acts, for the activation history: ``user@host``."""
        try:
            user = getpass.getuser()
        except Exception:  # no user name in some containers
            user = "unknown"
        return f"{user}@{socket.gethostname()}"

    def store(self) -> LineStore:
        """The LineStore of the settings (created on first use)."""
        if self._store is None:
            from memkd_stream.lines.store import LineStore

            self._store = LineStore.from_settings(self.settings.redis)
        return self._store


def build_parser() -> argparse.ArgumentParser:
    """The full ``memkd-stream`` parser with every available sub-command."""
    parser = CommandParser(
        prog=PROG,
        description="Train, evaluate and manage MemKD line models; talk to the inspection stream.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=CommandParser
    )
    for name in _COMMAND_MODULES:
        importlib.import_module(f"memkd_stream.cli.{name}").register(subparsers)
    for name in _OPTIONAL_MODULES:
        module_name = f"memkd_stream.cli.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``memkd-stream`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    prefer_passive_openmp()  # before a handler imports torch
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        if isinstance(exc.code, int):
            return exc.code
        return ExitCode.OK if exc.code is None else ExitCode.USAGE
    out = Output(json_mode=getattr(args, "json", False))
    try:
        settings = _load_settings(getattr(args, "config", None), getattr(args, "log_level", None))
    except MemkdStreamError as exc:
        out.error(exc.code, str(exc))
        return ExitCode.USAGE
    handler: Callable[..., int | None] = args.handler
    try:
        return int(handler(Context(args, settings, out)) or 0)
    except KeyboardInterrupt:
        out.error(ErrorCode.INTERRUPTED, "interrupted")
        return ExitCode.INTERRUPTED
    except UsageError as exc:
        out.error(exc.code, str(exc))
        return ExitCode.USAGE
    except KafkaRefused as exc:
        out.error(exc.code, str(exc))
        return ExitCode.USAGE
    except MemkdStreamError as exc:
        out.error(exc.code, str(exc))
        return ExitCode.FAILED
    except Exception as exc:
        if is_refused(exc):  # credentials or certificate: the settings must change
            out.error(ErrorCode.KAFKA_REFUSED, str(refused(settings.kafka.bootstrap_servers, exc)))
            return ExitCode.USAGE
        code = _expected_error_code(exc)
        if code is None:
            raise
        out.error(code, _describe(exc, settings))
        return ExitCode.FAILED


def _load_settings(config: Path | None, log_level: str | None) -> Settings:
    from memkd_stream.log import configure_logging
    from memkd_stream.settings import load_settings

    settings = load_settings(config)
    log_settings = settings.log
    if log_level is not None:
        log_settings = log_settings.model_copy(update={"level": log_level})
    configure_logging(log_settings)
    if log_settings.level.upper() != "DEBUG":
        # A command reports a broker problem itself in one line; kafka-python's per-retry
        # connection errors would bury it (the worker keeps them: its log is its record).
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    return settings


def _expected_error_code(exc: BaseException) -> str | None:
    """The code of an error a user can act on (memkd's errors, file errors), else None (a bug)."""
    memkd_errors = sys.modules.get("memkd.errors")
    if memkd_errors is not None and isinstance(exc, memkd_errors.MemKDError):
        return str(exc.code)
    if is_unreachable(exc):
        return ErrorCode.KAFKA_UNAVAILABLE
    if isinstance(exc, OSError) and exc.filename is not None:
        return ErrorCode.FILE_ERROR
    return None


def _describe(exc: BaseException, settings: Settings | None = None) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    if is_unreachable(exc):
        where = settings.kafka.bootstrap_servers if settings is not None else "?"
        detail = str(exc).removeprefix(f"{type(exc).__name__}: ")
        # kafka-python says the same "timed out" for a dead broker and for a missing topic.
        return (
            f"Kafka at {where} did not answer in time: {detail} (is the broker up and "
            "MEMKD_KAFKA__BOOTSTRAP_SERVERS right? do the topics exist? memkd-stream topics create)"
        )
    return str(exc)

"""``memkd-stream dlq replay``: send dead letters back to the inspect topic, e.g. after a broken
artifact was fixed or a Redis outage ended.

One pass over the dead-letter topic, in a window fixed when it starts (from --since, or the
beginning, to the end at the start): each matching dead letter is re-produced once with its
original key, value and headers, without the error headers, with memkd-id set to the original id
(so its result joins the image) and memkd-replay-count one higher. A replay is a new request. A
record is replayed at most 3 times in all; dead letters that lost their image, key or headers to
the size limit (or were never parsed) are listed and not replayed. --dry-run only lists.
"""

from __future__ import annotations

import argparse
import re
import time
from datetime import UTC, datetime
from typing import Any

from rich.console import Console

from memkd_stream.cli.main import Context, line_arg
from memkd_stream.cli.output import Output
from memkd_stream.cli.stream import CONNECT_TIMEOUT_S, plural
from memkd_stream.contract.codes import DeadLetterCode

__all__ = ["parse_since", "register"]

_EPILOG = """\
examples:
  memkd-stream dlq replay --code line-unavailable --since 2h --dry-run
  memkd-stream dlq replay --code line-unavailable --since 2h
  memkd-stream dlq replay --line A --code model-error --since 2025-01-31T06:00
  memkd-stream results --dlq                  the dead letters, with their replay counts

a second pass over the same window replays the same dead letters again: fix the window with
--since (the time of the fix) to replay each once.
"""

_UNITS_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_RE = re.compile(r"(?:[0-9]+(?:ms|s|m|h|d|w))+")
_PART_RE = re.compile(r"([0-9]+)(ms|s|m|h|d|w)")


def parse_since(text: str, now_s: float) -> int:
    """``--since``: an ISO 8601 time (no zone = UTC) or a duration back from ``now_s`` (``15m``,
    ``2h``, ``1h30m``, ``1d``), as ms since the epoch. Raises ValueError saying what is expected."""
    spec = text.strip()
    if _DURATION_RE.fullmatch(spec):
        seconds = sum(int(n) * _UNITS_S[unit] for n, unit in _PART_RE.findall(spec))
        return int((now_s - seconds) * 1000)
    try:
        when = datetime.fromisoformat(spec)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO time (2025-01-31T06:00, 2025-01-31T06:00+01:00) nor a "
            "duration (15m, 2h, 1h30m, 1d)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _since_arg(text: str) -> int:
    try:
        return parse_since(text, time.time())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _code_arg(text: str) -> str:
    try:
        return DeadLetterCode(text).value
    except ValueError:
        known = ", ".join(code.value for code in DeadLetterCode)
        raise argparse.ArgumentTypeError(
            f"{text!r} is no dead-letter code; one of {known}"
        ) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dlq",
        help="replay dead letters to the inspect topic",
        description=__doc__,
        epilog=_EPILOG,
    )
    actions = parser.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    p = actions.add_parser(
        "replay",
        help="re-produce matching dead letters to the inspect topic (once each, bounded)",
        description=__doc__,
        epilog=_EPILOG,
    )
    p.add_argument(
        "--code",
        type=_code_arg,
        action="append",
        default=[],
        metavar="CODE",
        help="only dead letters with this code (repeatable; default: every code)",
    )
    p.add_argument("--line", type=line_arg, default=None, help="only this line's dead letters")
    p.add_argument(
        "--since",
        type=_since_arg,
        default=None,
        metavar="T",
        help="only dead letters from T on: an ISO time (no zone = UTC) or a duration back from "
        "now (15m, 2h, 1d); default: all",
    )
    p.add_argument("--dry-run", action="store_true", help="list what would be replayed; send none")
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=CONNECT_TIMEOUT_S,
        metavar="S",
        help=f"seconds to wait for the broker before giving up (default {CONNECT_TIMEOUT_S:g})",
    )
    p.set_defaults(handler=_replay)


def _replay(ctx: Context) -> int:
    from memkd_stream.broker.replay import replay_dead_letters

    args = ctx.args
    report = replay_dead_letters(
        ctx.settings.kafka,
        codes=args.code,
        line=args.line,
        since_ms=args.since,
        dry_run=args.dry_run,
        connect_timeout_s=float(args.connect_timeout),
    )

    def human(console: Console) -> None:
        if report.rows:
            console.print(
                Output.table(
                    ["DLQ", "ID", "LINE", "CODE", "REPLAYS", "ACTION"],
                    [
                        (r["dlq"], r["id"], r["line"], r["code"], r["replay_count"], _action(r))
                        for r in report.rows
                    ],
                )
            )
        verb = "would replay" if report.dry_run else "replayed"
        console.print(
            f"{verb} {plural(report.replayed, 'dead letter')} to {report.inspect_topic}, "
            f"listed {report.skipped} not replayable, of {report.scanned} read in "
            f"{report.dlq_topic}{_window(report.since_ms)}"
        )

    ctx.out.result(report.as_dict(), human)
    return 0


def _action(row: dict[str, Any]) -> str:
    if row["action"] == "replayed":
        return f"replayed -> {row.get('to', '?')}"
    if row["action"] == "skipped":
        return f"not replayed: {row['detail']}"
    return "would replay"


def _window(since_ms: int | None) -> str:
    if since_ms is None:
        return ""
    when = datetime.fromtimestamp(since_ms / 1000, UTC).isoformat(timespec="seconds")
    return f" since {when.replace('+00:00', 'Z')}"

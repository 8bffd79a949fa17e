"""Human output on a terminal, one JSON document with ``--json``, and one-line errors.

Results go to stdout (a table or sentences for people, JSON for scripts); progress, warnings and
errors go to stderr so that ``--json`` output stays parseable.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

__all__ = ["Output", "human_bytes"]


def human_bytes(n: int | float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


class Output:
    """Where a command writes its result, notes and errors.

    Args:
        json_mode: print results as JSON (``--json``) instead of tables and sentences.
        stdout, stderr: streams (tests pass StringIO).
    """

    def __init__(
        self, json_mode: bool = False, stdout: TextIO | None = None, stderr: TextIO | None = None
    ) -> None:
        self.json_mode = json_mode
        self._stdout = stdout or sys.stdout
        self._stderr = stderr or sys.stderr
        # Piped output is not cut at 80 columns: tables stay whole in logs and CI output.
        self.console = Console(file=self._stdout, highlight=False, soft_wrap=True)
        if not self.console.is_terminal:
            self.console = Console(file=self._stdout, highlight=False, soft_wrap=True, width=200)
        self.err_console = Console(file=self._stderr, highlight=False, soft_wrap=True)

    @property
    def interactive(self) -> bool:
        """True when a person watches stderr (progress bars make sense)."""
        return self.err_console.is_terminal and not self.json_mode

    def result(self, data: Any, human: Callable[[Console], None] | str | None = None) -> None:
        """The command's result: ``data`` as JSON with --json, else ``human`` (text or printer)."""
        if self.json_mode:
            self._stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
            self._stdout.flush()
        elif callable(human):
            human(self.console)
        elif human is not None:
            self.console.print(human, markup=False)

    def note(self, text: str) -> None:
        """Progress or context for people (stderr, so JSON on stdout stays clean)."""
        self.err_console.print(text, markup=False)

    def warn(self, text: str) -> None:
        self.err_console.print(f"warning: {text}", markup=False, style="yellow")

    def error(self, code: str, message: str) -> None:
        """One line on stderr (and, with --json, an error document on stdout)."""
        line = " ".join(str(message).split())
        self._stderr.write(f"memkd-stream: error: {line} [{code}]\n")
        self._stderr.flush()
        if self.json_mode:
            self._stdout.write(json.dumps({"error": {"code": code, "message": line}}) + "\n")
            self._stdout.flush()

    @staticmethod
    def table(
        columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None
    ) -> Table:
        """A plain rich table; ``None`` cells print as ``-``."""
        table = Table(title=title, title_justify="left", header_style="bold", box=None)
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*("-" if cell is None else str(cell) for cell in row))
        return table

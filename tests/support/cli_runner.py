"""Runs the installed ``memkd-stream`` as a user does: a subprocess with a fixed environment."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class CLI:
    """Runs ``memkd-stream`` with a fixed environment; ``run(...)`` -> CompletedProcess."""

    executable: Path
    env: dict[str, str]
    cwd: Path
    calls: list[list[str]] = field(default_factory=list)

    def run(
        self, *args: str, timeout: float = 300, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(args))
        return subprocess.run(
            [str(self.executable), *args],
            env={**self.env, **(env or {})},
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

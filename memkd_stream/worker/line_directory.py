"""Which line ids exist in Redis, as far as this worker knows (DESIGN.md §5).

The record key is chosen by the sender, so nothing the worker keeps per key may grow with what
senders invent: per-line metric labels, locks and load attempts are only for lines that exist.
This directory answers "does line X exist?" from the set of line ids in Redis, re-read at most
once per ``worker.unknown_line_ttl_s`` (one SMEMBERS, however many unknown keys arrive), and
told at once about lines that appear through activation events, so a new line is never refused
for long. During a Redis outage the last set read decides. Before any read has succeeded every
line may exist (the worker then treats a line it cannot load as unavailable, not unknown).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from memkd_stream.log import get_logger

if TYPE_CHECKING:
    from memkd_stream.lines.store import LineStore

__all__ = ["LineDirectory"]


class LineDirectory:
    """The known line ids, refreshed lazily and on activation events; thread-safe."""

    def __init__(
        self,
        store: LineStore,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._known: frozenset[str] | None = None  # None: never read
        self._read_at = float("-inf")
        self.log = get_logger(__name__)

    def knows(self, line: str) -> bool:
        """Whether ``line`` is in the set last read (never a Redis call; for metric labels)."""
        known = self._known
        return known is not None and line in known

    def known_lines(self) -> frozenset[str]:
        """The set last read (empty before any read succeeded)."""
        return self._known or frozenset()

    def may_exist(self, line: str) -> bool:
        """False when ``line`` is not in Redis: from the set last read, re-read when older than
        the TTL. True while no read has succeeded yet (the caller will find out when it loads)."""
        if self.knows(line):
            return True
        with self._lock:
            stale = self._clock() - self._read_at >= self._ttl_s
        if stale:
            self.refresh()
        known = self._known
        return known is None or line in known

    def refresh(self) -> None:
        """Re-read the set of line ids; on a Redis error keep the last one (and wait a TTL)."""
        with self._lock:
            self._read_at = self._clock()
        try:
            lines = frozenset(self._store.lines())
        except Exception as exc:  # Redis down: the last known set decides
            self.log.warning(
                "cannot list the lines in Redis; using the last known set", error=str(exc)
            )
            return
        with self._lock:
            self._known = lines

    def add(self, line: str) -> None:
        """A line that exists now (an activation event named it)."""
        with self._lock:
            if self._known is not None and line not in self._known:
                self._known = self._known | {line}

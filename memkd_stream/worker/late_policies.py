"""Each line's late policy as this worker last read it (DESIGN.md §3 late images, §5).

The policy is a setting (``worker.late_policy``) with a per-line override in Redis. The
inference thread looks it up for every batch, so it is never read from Redis there: the hot-swap
thread reads the overrides (at start-up, at every re-read of the lines, on every event naming a
line) and replaces them here. During a Redis outage the last overrides read decide.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from memkd_stream.contract.lateness import LatePolicy

__all__ = ["LatePolicies"]


class LatePolicies:
    """The global late policy and the per-line overrides last read; thread-safe."""

    def __init__(self, default: LatePolicy) -> None:
        self.default = LatePolicy(default)
        self._lock = threading.Lock()
        self._overrides: dict[str, LatePolicy] = {}

    def policy(self, line: str) -> LatePolicy:
        """The policy for ``line``: its override, else the global one (no Redis call)."""
        return self._overrides.get(line, self.default)

    def overrides(self) -> dict[str, LatePolicy]:
        """A copy of the overrides held now."""
        with self._lock:
            return dict(self._overrides)

    def replace(self, overrides: Mapping[str, LatePolicy]) -> None:
        """Every override there is (a full re-read): lines not named have none any more."""
        fresh = {line: LatePolicy(policy) for line, policy in overrides.items()}
        with self._lock:
            self._overrides = fresh

    def set(self, line: str, policy: LatePolicy | None) -> None:
        """One line's override as just read (None: it has none)."""
        with self._lock:
            fresh = dict(self._overrides)
            if policy is None:
                fresh.pop(line, None)
            else:
                fresh[line] = LatePolicy(policy)
            self._overrides = fresh

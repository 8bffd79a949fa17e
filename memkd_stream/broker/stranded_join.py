"""Repair for a kafka-python 3.0.12 consumer left in a rebalance that nothing will finish.

``poll()`` gives a join only what is left of its timeout; a join still in flight when that runs
out is re-awaited by the next ``poll()`` only while ``need_rejoin()`` is true. When the rejoin
was caused by a metadata change (the leader's partition snapshot, or the subscription), the
join itself clears that cause as soon as its JoinGroup response arrives, so nobody collects its
result: the member stays ``REBALANCING`` for good, with heartbeats off. The broker evicts it after
the session timeout while it keeps fetching (another member may now own those partitions), and
every commit is refused client-side (``RebalanceInProgressError``). Seen once in CI, right after
a worker's first assignment to a just-created topic: the second rebalance that a metadata fetch
made before ``subscribe`` forced. The worker now subscribes first (DESIGN.md §4), which removes
that trigger but not the others (partitions added, a subscription change).

The repair asks the coordinator for a rejoin: the next ``poll()`` sends a fresh JoinGroup (an
evicted member gets ``UnknownMemberId``, resets and joins anew) and finishes it. Only a state
seen on two checks in a row counts (a join whose result the current ``poll()`` is about to
collect looks the same for a moment). The coordinator is a private attribute: a client without
one (another kafka-python version) is left alone, and ``kafka.commit_stall_timeout_s`` remains
the last resort.
"""

from __future__ import annotations

from typing import Any

__all__ = ["StrandedJoinRepair"]


class StrandedJoinRepair:
    """Call ``check(consumer)`` every second or so; True when it requested a rejoin."""

    def __init__(self) -> None:
        self._seen = False

    def check(self, consumer: Any) -> bool:
        coordinator: Any = getattr(consumer, "_coordinator", None)
        try:
            stranded = bool(coordinator.rebalance_in_progress()) and not coordinator.need_rejoin()
        except Exception:  # no coordinator, or another client version: nothing to repair
            stranded = False
        if not stranded:
            self._seen = False
            return False
        if not self._seen:
            self._seen = True
            return False
        self._seen = False
        coordinator.request_rejoin()
        return True

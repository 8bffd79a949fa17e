"""The age check of a batch about to be scored (DESIGN.md §3, late images).

With ``worker.max_age_ms`` set, each image of a batch is judged when the batch is about to run
(so consumer lag, queueing and parking all count): one older than the maximum age plus the
clock-skew margin is late, and its line's late policy (``LatePolicies``) decides: ``score``
keeps it, marked with its ``late_ms`` for the result; ``dead-letter`` dead-letters it ``stale``
instead of spending the device on a verdict nobody can use. Both count in
``memkd_late_images_total{line, policy}``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from memkd_stream.contract.codes import DeadLetterCode
from memkd_stream.contract.lateness import LatePolicy, late_ms
from memkd_stream.worker.context import WorkerContext
from memkd_stream.worker.late_policies import LatePolicies
from memkd_stream.worker.sink import ResultSink
from memkd_stream.worker.work_item import WorkItem

__all__ = ["LateImages"]


class LateImages:
    """Marks late images of a batch and dead-letters those whose policy says so."""

    def __init__(
        self,
        ctx: WorkerContext,
        policies: LatePolicies,
        sink: ResultSink,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ctx = ctx
        self.policies = policies
        self.sink = sink
        self.clock = clock

    def admit(self, items: list[WorkItem]) -> list[WorkItem]:
        """The items to score, late ones marked (``late_ms``); the rest are dead-lettered."""
        max_age_ms = self.ctx.worker.max_age_ms
        if max_age_ms is None:
            return items
        skew_ms = self.ctx.worker.clock_skew_ms
        now = self.clock()
        kept: list[WorkItem] = []
        for item in items:
            request = item.request
            late = None if request is None else late_ms(request.sent_at_s, now, max_age_ms, skew_ms)
            if request is None or late is None:
                kept.append(item)
                continue
            policy = self.policies.policy(request.line)
            self.ctx.metrics.late_image(request.line, policy)
            if policy is LatePolicy.DEAD_LETTER:
                self.sink.dead_letter(
                    item,
                    DeadLetterCode.STALE,
                    f"the image was {late + max_age_ms:.0f} ms old when it would have been scored, "
                    f"over worker.max_age_ms={max_age_ms} (+ clock_skew_ms={skew_ms}); line "
                    f"{request.line!r} dead-letters late images (late policy {policy.value})",
                )
                continue
            item.late_ms = late
            kept.append(item)
        return kept

"""Late images (DESIGN.md §3): when an image is too old for its verdict to matter, and what then.

An image is late when, at the moment it would be scored, its age (from ``memkd-sent-at``, else
the record timestamp: ``Request.sent_at_s``) exceeds ``worker.max_age_ms`` by more than the
clock-skew margin ``worker.clock_skew_ms`` (sender and worker clocks differ). The line's late
policy decides what a late image becomes: ``score`` still scores it and its result carries
``late_ms`` (how far past the maximum age it was); ``dead-letter`` dead-letters it ``stale``,
for lines where a late verdict is useless (the part has left the reject gate).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["LatePolicy", "late_ms"]


class LatePolicy(StrEnum):
    """What a late image becomes: a setting, with a per-line override in Redis (§5)."""

    SCORE = "score"
    DEAD_LETTER = "dead-letter"


def late_ms(
    sent_at_s: float, now_s: float, max_age_ms: float, clock_skew_ms: float
) -> float | None:
    """How many ms past ``max_age_ms`` the image is at ``now_s``, or None when it is not late.

    Not late while its age is within ``max_age_ms + clock_skew_ms``: a sender's clock a little
    ahead or behind never makes an image late. An image from the future is never late.
    """
    age_ms = (now_s - sent_at_s) * 1000.0
    if age_ms <= max_age_ms + clock_skew_ms:
        return None
    return age_ms - max_age_ms

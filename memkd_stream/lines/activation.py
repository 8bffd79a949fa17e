"""Why a version became active: the ``reason`` of every activation in a line's history.

Operators and auditors read the history to learn who put a model in front of the cameras and on
what grounds (DESIGN.md §5); scripts dispatch on these values, so they are stable.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ActivationReason"]


class ActivationReason(StrEnum):
    """The grounds of an activation."""

    GATE_PASSED = "gate-passed"  # scored not worse than the active version (memkd.gate)
    FORCED = "forced"  # --force: activated although the gate refused or could not compare
    FIRST_VERSION = "first-version"  # nothing active to compare with
    OPERATOR = "operator"  # `lines activate`: an explicit operator act
    ROLLBACK = "rollback"  # `lines rollback`

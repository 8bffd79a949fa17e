"""Where a line artifact comes from, read from its JSON record alone (no torch, no tensors).

A line has full artifacts (every weight of the student, ``memkd.line_model.RECORD_KIND``) and
delta artifacts (``DELTA_KIND``, written by ``memkd.delta``): only the tensors that differ from
a full parent (a memory-only refit: the NR memories; a threshold change: none) plus the whole
record. A delta names its parent by sha256 (the identity of the bytes) and, when the line store
knows it, by version. A delta's parent is always a full artifact, so composing never chains.

The questions the service asks of records before it moves any tensor live here, because they
must give the same answers in ``memkd_stream.lines`` (which never imports torch) and in the
worker: is it a delta, what is its parent, can two versions share the teacher's features
(``input_differences``: shadow scoring), and can a delta's tensors drop into a parent's student
(``weight_differences``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DELTA_KIND",
    "DELTA_SCHEMA",
    "FULL_KIND",
    "ParentRef",
    "delta_tensor_names",
    "input_differences",
    "is_delta",
    "parent_of",
    "weight_differences",
]

FULL_KIND = "memkd-line-model"  # = memkd.line_model.RECORD_KIND (that module imports torch)
DELTA_KIND = "memkd-line-delta"
DELTA_SCHEMA = 1


@dataclass(frozen=True)
class ParentRef:
    """The full artifact a delta applies to: its sha256, and its line and version when known."""

    sha256: str
    version: int | None = None
    line: str | None = None

    def __post_init__(self) -> None:
        digest = str(self.sha256).lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"a parent sha256 is 64 hex digits, got {self.sha256!r}")
        object.__setattr__(self, "sha256", digest)

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "version": self.version, "line": self.line}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParentRef:
        version = data.get("version")
        return cls(
            str(data["sha256"]),
            int(version) if version is not None else None,
            str(data["line"]) if data.get("line") is not None else None,
        )


def is_delta(record: Mapping[str, Any]) -> bool:
    """True for a delta artifact's record."""
    return record.get("kind") == DELTA_KIND


def parent_of(record: Mapping[str, Any]) -> ParentRef | None:
    """The parent a delta names (None for a full artifact).

    Raises:
        ValueError: a delta record without a usable parent reference.
    """
    if not is_delta(record):
        return None
    parent = record.get("parent")
    if not isinstance(parent, Mapping) or "sha256" not in parent:
        raise ValueError("the delta's record does not name its parent artifact")
    return ParentRef.from_dict(parent)


def delta_tensor_names(record: Mapping[str, Any]) -> tuple[str, ...]:
    """Names of the tensors a delta replaces in its parent (empty for a full artifact)."""
    if not is_delta(record):
        return ()
    return tuple(str(name) for name in record.get("tensors") or ())


def _teacher_identity(record: Mapping[str, Any]) -> tuple[Any, ...]:
    teacher = record.get("teacher") or {}
    return (teacher.get("name"), teacher.get("fingerprint"))


def input_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """What keeps two line models from scoring on the same teacher features: backbone (and its
    weights), input size, normalisation, region of interest, tiling. Empty when they can share
    them."""
    checks = {
        "backbone": (_teacher_identity(a), _teacher_identity(b)),
        "input size": (a.get("input_size"), b.get("input_size")),
        "normalisation": (a.get("normalization"), b.get("normalization")),
        "region of interest": (a.get("roi"), b.get("roi")),
        "tiling": (a.get("tiling"), b.get("tiling")),
    }
    return [f"{name} {x!r} vs {y!r}" for name, (x, y) in checks.items() if x != y]


# Model settings that change how a map becomes a score, not the network's tensors.
_SCORING_SETTINGS = frozenset({"score_topk"})


def _network(record: Mapping[str, Any]) -> Any:
    model = record.get("model")
    if not isinstance(model, Mapping):
        return model
    return {k: v for k, v in model.items() if k not in _SCORING_SETTINGS}


def weight_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """What keeps one record's tensors from fitting the other's student: the network config
    (not its image score: a parent written before ``score_topk`` existed still takes a delta),
    its widths, and everything ``input_differences`` checks. Empty when they fit."""
    checks = {
        "network": (_network(a), _network(b)),
        "widths": (a.get("widths"), b.get("widths")),
    }
    found = [f"{name} {x!r} vs {y!r}" for name, (x, y) in checks.items() if x != y]
    return found + input_differences(a, b)

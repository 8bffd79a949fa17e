"""What travels through the worker's pipeline: one request (``WorkItem``) and one scored batch.

An item remembers its partition's ``OffsetTracker`` generation at the time it was read, so any
stage can tell that the partition was revoked or lost since (``is_current``) and drop the item:
its next owner re-reads it from the last commit, so producing it here would only duplicate it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from kafka import TopicPartition

from memkd_stream.contract.headers import Headers
from memkd_stream.contract.request import Request
from memkd_stream.worker.decode import DecodedImage
from memkd_stream.worker.offsets import OffsetTracker

if TYPE_CHECKING:
    from memkd_stream.worker.engine import LoadedLine, ShadowScores

__all__ = ["ScoredBatch", "WorkItem", "is_current", "log_fields", "partition_names"]


@dataclass
class WorkItem:
    """One request travelling through the pipeline."""

    tp: TopicPartition
    generation: int
    offset: int
    key: bytes | None
    value: bytes | None = field(repr=False)
    headers: Headers
    request: Request | None = None
    loaded: LoadedLine | None = None
    decoded: DecodedImage | None = None
    decoded_mono: float = 0.0
    decode_s: float = 0.0
    retry: bool = False
    late_ms: float | None = None  # set when the image was late but its line still scores it


@dataclass
class ScoredBatch:
    """A batch's outputs waiting to be published."""

    items: list[WorkItem]
    loaded: LoadedLine
    maps: np.ndarray  # [B, H, W] float32
    scores: list[float]
    started_wall: float
    forward_s: float
    batch_wait_s: list[float]
    shadow: ShadowScores | None = None


def is_current(tracker: OffsetTracker[TopicPartition], item: WorkItem) -> bool:
    """False when the item's partition was forgotten (revoked/lost) after it was read."""
    return tracker.generation(item.tp) == item.generation


def log_fields(item: WorkItem, offset: int | None = None) -> dict[str, Any]:
    """The fields every log line about one record carries."""
    req = item.request
    return {
        "line": req.line if req else None,
        "id": req.id if req else None,
        "partition": item.tp.partition,
        "offset": item.offset if offset is None else offset,
    }


def partition_names(tps: set[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}:{tp.partition}" for tp in tps)

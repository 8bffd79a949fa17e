"""Tiled lines in the worker: fan a frame out into tiles, fan the tiles' outputs back in.

A tiled line's frame (``memkd.tiling``, DESIGN.md §3) is decoded into all its tiles at once
(``DecodedImage.tensor`` [N, 3, S, S] with its ``grid``) and travels through the pipeline as one
``WorkItem``: one record, one result. What changes is what counts:

- the micro-batcher weighs an item by its tile count (``tile_count``), so ``worker.max_batch``
  bounds the tiles of one forward, not the frames; a frame with more tiles than that runs alone,
  forwarded ``max_batch`` tiles at a time (``forward``);
- backpressure counts the tiles decoded and waiting for the device (``TilesInFlight``), so
  ``worker.queue_max_records`` bounds the tensors held, whatever the frame size;
- a frame's tiles are all scored by the ``LoadedLine`` its item took at decode, so they never
  split across model versions, even when a swap lands between two of its forwards.

The fan-in (``split``) gives each item its score (max over its tiles) and its tile maps; the
publisher thread stitches them (``frame_map``) so the device thread never waits on it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np
import torch
from memkd.tiling import score_tiled, stitch

from memkd_stream.worker.decode import DecodedImage

__all__ = ["TilesInFlight", "forward", "frame_map", "inputs", "split", "tile_count"]


def tile_count(decoded: DecodedImage) -> int:
    """Model inputs this image is: its tiles, or 1 for an untiled line."""
    return 1 if decoded.grid is None else len(decoded.grid)


def inputs(images: Sequence[DecodedImage]) -> tuple[torch.Tensor, list[int]]:
    """The batch [sum(counts), 3, S, S] of every image's inputs and each image's count."""
    parts = [d.tensor if d.grid is not None else d.tensor.unsqueeze(0) for d in images]
    return torch.cat(parts), [len(p) for p in parts]


def forward(
    score_batch: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    batch: torch.Tensor,
    max_tiles: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Maps [N, h, w] and scores [N], forwarding at most ``max_tiles`` inputs at a time."""
    maps, scores = score_tiled(score_batch, batch, max_tiles or len(batch))
    return maps.numpy(), scores.numpy()


def split(
    maps: np.ndarray, scores: np.ndarray, counts: Sequence[int], images: Sequence[DecodedImage]
) -> tuple[list[np.ndarray], list[float]]:
    """Per image: its map ([H, W] untiled, its tile maps [n, h, w] tiled) and its score (the
    maximum over its tiles: DESIGN.md §3)."""
    out_maps: list[np.ndarray] = []
    out_scores: list[float] = []
    start = 0
    for n, decoded in zip(counts, images, strict=True):
        part = maps[start : start + n]
        out_maps.append(part if decoded.grid is not None else part[0])
        out_scores.append(float(scores[start : start + n].max()))
        start += n
    return out_maps, out_scores


def frame_map(item_map: np.ndarray, decoded: DecodedImage) -> np.ndarray:
    """The map a result's mask renders: the image's own, or its tiles stitched over the ROI."""
    return item_map if decoded.grid is None else stitch(item_map, decoded.grid)


class TilesInFlight:
    """Tiles decoded and not yet through the device, beyond one per record (thread-safe).

    The consumer's backpressure adds ``extra`` to the records in flight, so that a tiled
    frame of 40 tiles weighs 40 against ``worker.queue_max_records``, not 1.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._extra = 0

    @property
    def extra(self) -> int:
        with self._lock:
            return self._extra

    def hold(self, decoded: DecodedImage) -> None:
        with self._lock:
            self._extra += tile_count(decoded) - 1

    def release(self, decoded: DecodedImage | None) -> None:
        if decoded is None:
            return
        with self._lock:
            self._extra = max(0, self._extra - (tile_count(decoded) - 1))

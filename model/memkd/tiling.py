"""Tiling for large frames: the tile grid, cutting, stitching and the frame score.

Line cameras send 2-12 MP frames; resized whole to a 256 px input, a 10-pixel scratch becomes one
pixel and no model finds it. A tiled line instead cuts its region of interest into square tiles
of ``Tiling.size`` image pixels (neighbours share ``Tiling.overlap`` pixels) and scores every tile
as a model input of its own: each tile goes through ``memkd.preprocess`` with the tile's box as
the crop, so fit, eval and the worker still share one preprocessing function (DESIGN.md §7).

The grid (``tile_grid``): along each axis of length L, tiles start every ``size - overlap``
pixels; the last tile is shifted inward to end exactly at the edge (it overlaps its neighbour
more), so every tile is ``size`` pixels and no pixel is padded. An axis shorter than ``size``
has one tile of its whole length (resized up to the input like any tile).

A frame's verdict (DESIGN.md §3): its score is the maximum over its tiles' scores, its map is
the tiles' maps stitched onto the region of interest (``stitch``): where tiles overlap the
maximum wins, so the stitched map never hides a tile's peak. The stitched map's resolution is
the tile scale (``input_size / size`` map pixels per image pixel), reduced so that its longer
side is at most ``MASK_MAX_SIDE``; a reduction max-pools, so a pixel at or over the threshold
stays at or over it. The threshold is calibrated on frame scores (max over a good frame's
tiles), never tile scores: a frame of n tiles has n chances to raise a false alarm.

``model_scale`` is the hook for decoders that can decode at a reduced scale (JPEG draft mode):
how many model-input pixels a line needs per source pixel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from memkd.errors import ConfigError
from memkd.precision import Precision
from memkd.preprocess import preprocess

if TYPE_CHECKING:
    from memkd.backbones import Teacher
    from memkd.line_model import LineModel

__all__ = [
    "MASK_MAX_SIDE",
    "TileGrid",
    "Tiling",
    "cut_tiles",
    "default_input_size",
    "frame_scores",
    "model_scale",
    "score_frame",
    "score_tiled",
    "stitch",
    "tile_grid",
]

# The longest side of a tiled line's stitched mask (result size stays far below Kafka's limits).
MASK_MAX_SIDE = 512
Box = tuple[int, int, int, int]  # x, y, width, height


@dataclass(frozen=True)
class Tiling:
    """A line's tiling: square tiles of ``size`` image pixels, ``overlap`` pixels shared by
    neighbours. Stored in the artifact record next to the region of interest (DESIGN.md §5)."""

    size: int
    overlap: int = 0

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ConfigError(f"tile size must be >= 16 pixels, got {self.size}")
        if not 0 <= self.overlap < self.size:
            raise ConfigError(
                f"tile overlap must be >= 0 and smaller than the tile ({self.size}), got "
                f"{self.overlap}"
            )

    @property
    def stride(self) -> int:
        return self.size - self.overlap

    def to_dict(self) -> dict[str, int]:
        return {"size": self.size, "overlap": self.overlap}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Tiling | None:
        """None for a record without tiling; unknown keys are refused (a newer writer's)."""
        if data is None:
            return None
        unknown = sorted(set(data) - {"size", "overlap"})
        if unknown:
            raise ConfigError(f"tiling: unknown setting(s) {', '.join(unknown)}")
        return cls(int(data["size"]), int(data.get("overlap", 0)))


@dataclass(frozen=True)
class TileGrid:
    """Where a frame's tiles lie: ``boxes`` in the image's pixels (the ROI offset included),
    ``region`` the box they cover (the ROI, or the whole image) and the stitched map's size."""

    region: Box
    boxes: tuple[Box, ...]
    map_height: int
    map_width: int

    def __len__(self) -> int:
        return len(self.boxes)


def _starts(length: int, size: int, stride: int) -> list[int]:
    """Tile origins along one axis: every ``stride``, the last one flush with the edge."""
    if length <= size:
        return [0]
    count = math.ceil((length - size) / stride) + 1
    starts = [i * stride for i in range(count - 1)]
    return [*starts, length - size]


def tile_grid(
    width: int, height: int, tiling: Tiling, input_size: int, roi: Sequence[int] | None = None
) -> TileGrid:
    """The tiles of a ``width`` x ``height`` frame (inside ``roi``) and its stitched map size."""
    x0, y0, w, h = (int(v) for v in roi) if roi is not None else (0, 0, width, height)
    if w <= 0 or h <= 0 or x0 < 0 or y0 < 0 or x0 + w > width or y0 + h > height:
        raise ValueError(
            f"region of interest {(x0, y0, w, h)} does not fit a {width}x{height} image"
        )
    tw, th = min(tiling.size, w), min(tiling.size, h)
    boxes = tuple(
        (x0 + x, y0 + y, tw, th)
        for y in _starts(h, tiling.size, tiling.stride)
        for x in _starts(w, tiling.size, tiling.stride)
    )
    scale = min(input_size / tiling.size, MASK_MAX_SIDE / max(w, h))
    return TileGrid((x0, y0, w, h), boxes, max(1, round(h * scale)), max(1, round(w * scale)))


def cut_tiles(
    img: Image.Image,
    tiling: Tiling,
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    roi: Sequence[int] | None = None,
) -> tuple[torch.Tensor, TileGrid]:
    """``Tensor[N, 3, input_size, input_size]`` (one preprocessed input per tile) and the grid.

    Each tile is ``memkd.preprocess`` of the image with the tile's box as the crop: the same
    conversion, resize filter and normalisation as an untiled line's whole frame.
    """
    grid = tile_grid(img.width, img.height, tiling, input_size, roi)
    tiles = [preprocess(img, input_size, mean, std, box) for box in grid.boxes]
    return torch.stack(tiles), grid


def stitch(tile_maps: torch.Tensor | np.ndarray, grid: TileGrid) -> np.ndarray:
    """The frame's map [map_height, map_width] float32 from its tiles' maps [N, h, w].

    Each tile's map is brought to its box's size on the stitched map (max-pooled when smaller,
    bilinear when larger) and laid down; where tiles overlap, the maximum wins.
    """
    maps = torch.as_tensor(np.asarray(tile_maps) if not torch.is_tensor(tile_maps) else tile_maps)
    maps = maps.detach().float().cpu()
    if maps.ndim == 4:
        maps = maps[:, 0]
    if maps.ndim != 3 or maps.shape[0] != len(grid):
        raise ValueError(f"expected {len(grid)} tile maps [N, h, w], got {tuple(maps.shape)}")
    rx, ry, rw, rh = grid.region
    sx, sy = grid.map_width / rw, grid.map_height / rh
    canvas = np.full((grid.map_height, grid.map_width), -np.inf, dtype=np.float32)
    bw, bh = grid.boxes[0][2], grid.boxes[0][3]  # every tile of a grid has the same size
    out_h, out_w = max(1, round(bh * sy)), max(1, round(bw * sx))
    resized = _resize_maps(maps.unsqueeze(1), (out_h, out_w))[:, 0].numpy()
    for (x, y, _, _), tile in zip(grid.boxes, resized, strict=True):
        top, left = round((y - ry) * sy), round((x - rx) * sx)
        top, left = min(top, grid.map_height - out_h), min(left, grid.map_width - out_w)
        window = canvas[top : top + out_h, left : left + out_w]
        np.maximum(window, tile[: window.shape[0], : window.shape[1]], out=window)
    canvas[~np.isfinite(canvas)] = 0.0  # only where rounding left a pixel uncovered
    return canvas


def _resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    h, w = maps.shape[-2:]
    if (h, w) == size:
        return maps
    if size[0] <= h and size[1] <= w:
        return F.adaptive_max_pool2d(maps, size)  # keep every peak of a shrunk map
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def frame_scores(tile_scores: Sequence[float] | torch.Tensor, counts: Sequence[int]) -> list[float]:
    """Per frame the maximum of its tiles' scores; ``counts[i]`` tiles of frame i, in order."""
    scores = [float(s) for s in tile_scores]
    if sum(counts) != len(scores):
        raise ValueError(f"{len(scores)} tile scores for {sum(counts)} tiles")
    out: list[float] = []
    start = 0
    for n in counts:
        if n < 1:
            raise ValueError("a frame has at least one tile")
        out.append(max(scores[start : start + n]))
        start += n
    return out


def default_input_size(tiling: Tiling) -> int:
    """A tiled line's model input when none is given: the tile size, to a multiple of 32 (the
    network's stride) and at least 64."""
    return max(64, 32 * round(tiling.size / 32))


def model_scale(
    input_size: int,
    tiling: Tiling | None,
    width: int,
    height: int,
    roi: Sequence[int] | None = None,
) -> float:
    """Model-input pixels a line needs per source pixel, along the axis that needs most.

    Untiled: the ROI (or the frame) is resized to ``input_size`` square; tiled: each tile of
    ``tiling.size`` pixels is. A decoder may decode at any scale at or above this (a JPEG draft
    decode at 1/2, 1/4, 1/8) without losing a pixel the model would see.
    """
    if tiling is not None:
        return input_size / tiling.size
    _, _, w, h = (int(v) for v in roi) if roi is not None else (0, 0, width, height)
    return input_size / min(w, h)


def score_tiled(
    score_batch: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    tiles: torch.Tensor,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps [N, h, w] and scores [N] of ``tiles`` [N, 3, S, S], forwarded ``chunk`` at a time
    by ``score_batch`` (which returns maps [n, 1, h, w] and scores [n])."""
    maps: list[torch.Tensor] = []
    scores: list[torch.Tensor] = []
    for start in range(0, len(tiles), max(1, chunk)):
        m, s = score_batch(tiles[start : start + chunk])
        maps.append(m[:, 0].float().cpu())
        scores.append(s.float().cpu())
    return torch.cat(maps), torch.cat(scores)


def score_frame(
    model: LineModel,
    teacher: Teacher,
    img: Image.Image,
    precision: Precision | str = Precision.AUTO,
    chunk: int = 16,
) -> tuple[np.ndarray, float]:
    """A tiled line's stitched map and frame score (max over tiles) for one RGB frame."""
    if model.tiling is None:
        raise ValueError("score_frame is for tiled lines; this line scores whole frames")
    tiles, grid = cut_tiles(img, model.tiling, model.input_size, model.mean, model.std, model.roi)

    def forward(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        result = model.score(teacher, batch, precision)
        return result.maps, result.scores

    maps, scores = score_tiled(forward, tiles, chunk)
    return stitch(maps, grid), float(scores.max())

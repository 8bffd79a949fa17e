"""Tile grid, cutting, stitching and frame scores of tiled lines (memkd.tiling)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from memkd.errors import ConfigError
from memkd.preprocess import preprocess
from memkd.tiling import (
    MASK_MAX_SIDE,
    Tiling,
    cut_tiles,
    default_input_size,
    frame_scores,
    model_scale,
    stitch,
    tile_grid,
)
from PIL import Image

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _covered(
    grid_boxes: tuple[tuple[int, int, int, int], ...], width: int, height: int
) -> np.ndarray:
    hits = np.zeros((height, width), dtype=int)
    for x, y, w, h in grid_boxes:
        hits[y : y + h, x : x + w] += 1
    return hits


def test_tiles_cover_the_frame_and_the_edge_tile_is_shifted_inward() -> None:
    grid = tile_grid(300, 200, Tiling(128), 128)
    xs = sorted({b[0] for b in grid.boxes})
    ys = sorted({b[1] for b in grid.boxes})
    assert xs == [0, 128, 172] and ys == [0, 72]  # last tiles end flush with the edge
    assert all(b[2:] == (128, 128) for b in grid.boxes)  # never padded, never cut short
    assert (_covered(grid.boxes, 300, 200) >= 1).all()
    assert grid.region == (0, 0, 300, 200)


def test_overlap_sets_the_stride_and_an_exact_fit_adds_no_tile() -> None:
    grid = tile_grid(256, 256, Tiling(128, 32), 128)
    assert sorted({b[0] for b in grid.boxes}) == [0, 96, 128]  # stride 96, last flush at 128
    exact = tile_grid(256, 128, Tiling(128), 128)
    assert [b[:2] for b in exact.boxes] == [(0, 0), (128, 0)]


def test_tiles_stay_inside_the_roi() -> None:
    roi = (50, 40, 200, 150)
    grid = tile_grid(400, 300, Tiling(96, 16), 96, roi)
    for x, y, w, h in grid.boxes:
        assert x >= 50 and x + w <= 250 and y >= 40 and y + h <= 190
    hits = _covered(grid.boxes, 400, 300)
    assert (hits[40:190, 50:250] >= 1).all()
    assert hits.sum() == sum(w * h for *_, w, h in grid.boxes)
    assert hits[:40].sum() == hits[:, :50].sum() == hits[190:].sum() == hits[:, 250:].sum() == 0
    assert grid.region == roi


def test_an_axis_shorter_than_a_tile_has_one_tile_of_its_length() -> None:
    grid = tile_grid(500, 60, Tiling(128), 128)
    assert {b[1] for b in grid.boxes} == {0} and {b[3] for b in grid.boxes} == {60}
    assert len(grid) == 4


def test_stitched_map_size_is_the_tile_scale_capped_at_the_mask_limit() -> None:
    small = tile_grid(300, 200, Tiling(128), 64)  # half a map pixel per image pixel
    assert (small.map_height, small.map_width) == (100, 150)
    big = tile_grid(2448, 2048, Tiling(256), 256)
    assert big.map_width == MASK_MAX_SIDE and big.map_height == round(2048 * MASK_MAX_SIDE / 2448)
    with pytest.raises(ValueError, match="does not fit"):
        tile_grid(100, 100, Tiling(32), 64, (90, 0, 20, 20))


def test_cut_tiles_is_preprocess_of_each_tile_box() -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (150, 220, 3), dtype=np.uint8))
    tiles, grid = cut_tiles(img, Tiling(64, 8), 64, MEAN, STD, roi=(10, 5, 200, 140))
    assert tiles.shape == (len(grid), 3, 64, 64)
    for tile, box in zip(tiles, grid.boxes, strict=True):
        torch.testing.assert_close(tile, preprocess(img, 64, MEAN, STD, box))


def test_stitch_puts_each_tile_where_it_lies_and_overlaps_keep_the_maximum() -> None:
    grid = tile_grid(256, 128, Tiling(128, 64), 128)  # tiles at x 0, 64, 128
    assert [b[0] for b in grid.boxes] == [0, 64, 128]
    maps = np.zeros((3, 128, 128), np.float32)
    maps[0, 10, 70] = 5.0  # image (70, 10): also under tile 1 at its (6, 10), which is 1.0
    maps[1, 10, 6] = 1.0
    maps[2, 100, 120] = 3.0  # image (248, 100)
    out = stitch(maps, grid)
    assert out.shape == (128, 256)
    assert out[10, 70] == 5.0 and out[100, 248] == 3.0
    assert out.max() == 5.0 and np.count_nonzero(out) == 2


def test_a_shrunk_stitched_map_keeps_every_peak() -> None:
    grid = tile_grid(1024, 1024, Tiling(128), 128)  # 8 x 8 tiles, stitched at 512 (max-pooled)
    assert (grid.map_height, grid.map_width) == (512, 512)
    maps = np.zeros((len(grid), 128, 128), np.float32)
    maps[9, 33, 33] = 2.0  # tile (1, 1): a one-pixel peak
    out = stitch(torch.from_numpy(maps), grid)
    assert out.max() == 2.0
    y, x = np.unravel_index(out.argmax(), out.shape)
    assert (y, x) == ((128 + 33) // 2, (128 + 33) // 2)


def test_frame_score_is_the_max_over_its_tiles() -> None:
    assert frame_scores([0.1, 0.9, 0.2, 0.3, 0.4], [3, 2]) == pytest.approx([0.9, 0.4])
    with pytest.raises(ValueError):
        frame_scores([0.1, 0.2], [3])


def test_tiling_record_round_trip_and_rules() -> None:
    tiling = Tiling(256, 32)
    assert Tiling.from_dict(tiling.to_dict()) == tiling and tiling.stride == 224
    assert Tiling.from_dict(None) is None
    for bad in ({"size": 8}, {"size": 64, "overlap": 64}, {"size": 64, "overlap": -1}):
        with pytest.raises(ConfigError):
            Tiling.from_dict(bad)
    with pytest.raises(ConfigError, match="unknown"):
        Tiling.from_dict({"size": 64, "stride": 3})
    assert default_input_size(Tiling(128)) == 128 and default_input_size(Tiling(100)) == 96
    assert default_input_size(Tiling(40)) == 64


def test_model_scale_tells_a_decoder_how_much_resolution_the_line_needs() -> None:
    assert model_scale(128, Tiling(256), 2448, 2048) == 0.5  # a 1/2 draft decode loses nothing
    assert model_scale(256, None, 2448, 2048) == 256 / 2048
    assert model_scale(256, None, 2448, 2048, roi=(0, 0, 512, 1024)) == 0.5

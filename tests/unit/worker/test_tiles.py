"""Tiled lines in the worker: decode into tiles, batch and forward tiles, one result per frame."""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from kafka import TopicPartition
from memkd.preprocess import load_image
from memkd.tiling import Tiling, cut_tiles, stitch
from PIL import Image

from memkd_stream.worker import tiles
from memkd_stream.worker.decode import DecodedImage, ImageDecoder
from memkd_stream.worker.device_guard import DeviceGuard
from memkd_stream.worker.work_item import WorkItem

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _png(height: int, width: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_tiled_line_decodes_into_its_tiles_inside_the_roi() -> None:
    value = _png(120, 200)
    roi = (8, 4, 180, 100)
    decoded = ImageDecoder(10_000_000).decode(
        value, size=32, mean=MEAN, std=STD, roi=roi, tiling=Tiling(64, 16)
    )
    expected, grid = cut_tiles(load_image(value), Tiling(64, 16), 32, MEAN, STD, roi)
    assert decoded.grid == grid and tiles.tile_count(decoded) == len(grid) == 8
    torch.testing.assert_close(decoded.tensor, expected)
    assert (decoded.height, decoded.width) == (120, 200)  # the image as received


def _item(offset: int, decoded: DecodedImage) -> WorkItem:
    return WorkItem(TopicPartition("in", 0), 1, offset, b"A", b"", [], decoded=decoded)


def _tiled(values: list[float], size: int = 8) -> DecodedImage:
    """A frame of len(values) tiles whose tile i is the constant values[i]."""
    tensor = torch.stack([torch.full((3, size, size), v) for v in values])
    return DecodedImage(tensor, 8, 8 * len(values), grid=_Grid(len(values)))  # type: ignore[arg-type]


class _Grid:
    """All the fan-out needs of a grid: how many tiles."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


class Engine:
    """Map = the input's first channel; remembers which model and how many inputs each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, int]] = []

    def score(self, loaded: Any, batch: torch.Tensor) -> Any:
        self.calls.append((loaded, len(batch)))
        maps = batch[:, :1]
        return SimpleNamespace(maps=maps, scores=maps.flatten(1).amax(dim=1))


def test_tiles_are_forwarded_at_most_max_tiles_at_a_time_and_fan_in_per_frame() -> None:
    engine = Engine()
    loaded: Any = SimpleNamespace(name="A@1")
    frame = _tiled([0.1, 0.7, 0.3, 0.2, 0.5])
    plain = DecodedImage(torch.full((3, 8, 8), 0.4), 8, 8)
    items = [_item(0, frame), _item(1, plain), _item(2, _tiled([0.9, 0.6]))]
    (scored,), failed = DeviceGuard(engine, max_tiles=3).run(loaded, items)  # type: ignore[arg-type]
    assert failed == [] and scored.items == items
    assert [n for _, n in engine.calls] == [3, 3, 2]  # 8 inputs, at most 3 per forward
    assert all(who is loaded for who, _ in engine.calls)  # one model version for every tile
    assert scored.scores == [np.float32(0.7), np.float32(0.4), np.float32(0.9)]
    assert scored.maps[0].shape == (5, 8, 8) and scored.maps[1].shape == (8, 8)
    assert float(scored.maps[2][1].max()) == np.float32(0.6)


def test_the_publisher_stitches_a_tiled_frame_and_passes_an_untiled_map() -> None:
    value = _png(64, 160)
    decoded = ImageDecoder(10_000_000).decode(value, size=32, mean=MEAN, std=STD, tiling=Tiling(64))
    maps = np.random.default_rng(1).random((len(decoded.tensor), 32, 32)).astype(np.float32)
    assert decoded.grid is not None
    np.testing.assert_array_equal(tiles.frame_map(maps, decoded), stitch(maps, decoded.grid))
    assert tiles.frame_map(maps, decoded).shape == (32, 80)  # the frame at half scale
    one = maps[0]
    assert tiles.frame_map(one, DecodedImage(decoded.tensor[0], 64, 160)) is one


def test_tiles_in_flight_weigh_a_frame_by_its_tiles_and_release_once() -> None:
    budget = tiles.TilesInFlight()
    frame, plain = _tiled([0.0] * 6), DecodedImage(torch.zeros(3, 8, 8), 8, 8)
    budget.hold(frame)
    budget.hold(plain)
    assert budget.extra == 5  # 6 tiles are one record + 5 more
    budget.release(frame)
    budget.release(plain)
    budget.release(None)  # an item that never decoded
    assert budget.extra == 0

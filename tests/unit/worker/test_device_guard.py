"""What a failed batch means: an input's fault (model-error) or the device's (stop, exit 4)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from kafka import TopicPartition

from memkd_stream.worker.decode import DecodedImage
from memkd_stream.worker.device_guard import DeviceFault, DeviceGuard
from memkd_stream.worker.work_item import WorkItem

TP = TopicPartition("in", 0)


def _items(values: list[float]) -> list[WorkItem]:
    """Items whose 'image' is a constant tensor: the fake engine reads the constant."""
    return [
        WorkItem(
            tp=TP,
            generation=1,
            offset=i,
            key=b"A",
            value=b"",
            headers=[],
            decoded=DecodedImage(torch.full((3, 8, 8), v), 8, 8),
        )
        for i, v in enumerate(values)
    ]


class Engine:
    """Scores a batch unless ``fails(batch)`` says it raises."""

    def __init__(self, fails: Any) -> None:
        self.fails = fails
        self.calls: list[int] = []

    def score(self, _loaded: Any, batch: torch.Tensor) -> Any:
        self.calls.append(len(batch))
        error = self.fails(batch)
        if error is not None:
            raise error
        maps = batch[:, :1]
        return SimpleNamespace(maps=maps, scores=maps.flatten(1).amax(dim=1))

    def score_batch(self, loaded: Any, batch: torch.Tensor) -> tuple[Any, None]:
        return self.score(loaded, batch), None


LOADED: Any = SimpleNamespace(model=SimpleNamespace(config=SimpleNamespace(input_size=8)))


def test_an_image_that_fails_alone_while_others_score_is_its_own_fault() -> None:
    poison = 7.0
    engine = Engine(lambda b: RuntimeError("bad input") if (b == poison).any() else None)
    scored, failed = DeviceGuard(engine).run(LOADED, _items([1.0, poison, 2.0]))  # type: ignore[arg-type]
    assert sorted(s.items[0].offset for s in scored) == [0, 2]
    assert [(item.offset, str(exc)) for item, exc in failed] == [(1, "bad input")]


def test_everything_failing_and_a_plain_image_too_is_a_device_fault() -> None:
    engine = Engine(lambda b: RuntimeError("device-side assert triggered"))
    with pytest.raises(DeviceFault, match="plain gray"):
        DeviceGuard(engine).run(LOADED, _items([1.0, 2.0]))  # type: ignore[arg-type]


def test_everything_failing_but_a_plain_image_scoring_is_the_inputs_fault() -> None:
    engine = Engine(lambda b: RuntimeError("bad") if (b != 0).all() else None)
    scored, failed = DeviceGuard(engine).run(LOADED, _items([3.0]))  # type: ignore[arg-type]
    assert scored == [] and [item.offset for item, _ in failed] == [0]


def test_out_of_memory_halves_the_batch_and_at_one_image_is_a_device_fault() -> None:
    engine = Engine(lambda b: torch.OutOfMemoryError("CUDA out of memory") if len(b) > 2 else None)
    scored, failed = DeviceGuard(engine).run(LOADED, _items([1.0] * 8))  # type: ignore[arg-type]
    assert [len(s.items) for s in scored] == [2, 2, 2, 2] and not failed
    always = Engine(lambda b: torch.OutOfMemoryError("CUDA out of memory"))
    with pytest.raises(DeviceFault, match="single image"):
        DeviceGuard(always).run(LOADED, _items([1.0, 2.0]))  # type: ignore[arg-type]


def test_a_cuda_error_is_a_device_fault_at_once() -> None:
    engine = Engine(lambda b: torch.AcceleratorError("CUDA error: an illegal memory access"))
    with pytest.raises(DeviceFault, match="device error"):
        DeviceGuard(engine).run(LOADED, _items([1.0, 2.0, 3.0]))  # type: ignore[arg-type]
    assert engine.calls == [3]  # no retries on a broken device

"""Fixtures for LineStore tests: a store on a per-test key prefix and hand-made artifact files.

The artifacts here are valid safetensors files with a ``memkd`` record but no trained network:
the store only moves bytes, so these tests need no training and stay fast.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from memkd_stream.lines.store import LineStore

ArtifactFactory = Callable[..., Path]


@pytest.fixture
def store(redis_client, redis_prefix) -> LineStore:
    """A LineStore with small chunks, so that even small files span several chunks."""
    return LineStore(redis_client, prefix=redis_prefix, chunk_bytes=64 * 1024, retention=50)


@pytest.fixture
def make_artifact(tmp_path: Path) -> ArtifactFactory:
    """Write a safetensors file of about ``size`` bytes whose header carries a memkd record."""
    counter = iter(range(1_000_000))

    def make(size: int = 200_000, *, seed: int | None = None, record: dict | None = None) -> Path:
        n = next(counter)
        rng = np.random.default_rng(n if seed is None else seed)
        payload = rng.integers(0, 256, size=max(size - 256, 1), dtype=np.uint8)
        meta = {"memkd": json.dumps(record or {"model": {"backbone": "fake"}, "n": n})}
        path = tmp_path / f"artifact-{n}.safetensors"
        save_file({"payload": payload}, str(path), metadata=meta)
        return path

    return make

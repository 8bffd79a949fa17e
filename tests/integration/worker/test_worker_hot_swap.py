"""Hot swap mid-stream: results move from version 1 to 2 with no gap and no duplicate id."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.support.worker_env import WorkerEnv, category_images

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_activation_mid_stream_swaps_without_gap_or_duplicate(
    worker_env: WorkerEnv, artifact_v1: Path, artifact_v2: Path, line_data: Path
) -> None:
    store = worker_env.store()
    store.publish("A", artifact_v1, who="test")
    version2 = store.publish("A", artifact_v2, activate=False, who="test")
    files = category_images(line_data)
    n = 40
    payload = [(f"s-{i:03d}", files[i % len(files)].read_bytes()) for i in range(n)]
    # one decode thread: records of the partition are looked up in offset order
    worker = worker_env.start_thread_worker(MEMKD_WORKER__DECODE_THREADS="1")
    try:

        def stream() -> None:
            for i in range(0, n, 4):
                worker_env.produce(payload[i : i + 4], partition=0)
                time.sleep(0.2)

        producer = threading.Thread(target=stream)
        producer.start()
        assert worker_env.read(worker_env.results, count=8, timeout_s=60)
        store.activate("A", version2, who="test")
        producer.join()
        results = worker_env.read(worker_env.results, count=n, timeout_s=90)
        time.sleep(1)
        results = worker_env.read(worker_env.results, count=n, timeout_s=5)
    finally:
        assert worker.stop() == 0
    ids = [r["id"] for r in results]
    assert sorted(ids) == [i for i, _ in payload]  # no gap, no duplicate
    ordered = sorted(results, key=lambda r: r["source"]["offset"])
    versions = [r["model_version"] for r in ordered]
    assert versions[0] == "A@1" and versions[-1] == f"A@{version2}", versions
    switch = versions.index(f"A@{version2}")
    assert set(versions[switch:]) == {f"A@{version2}"}, versions  # never back to v1

"""Images from a transactional (exactly-once) gateway, on the real broker and Redis.

The official Java client commits some transactions and aborts others. An image of an aborted
transaction is no request (DESIGN.md §4): it gets no result and no dead letter, although its
record is in the log. Each committed image gets one result, and the worker's commits step over
the transaction markers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import TopicPartition

from memkd_stream.broker.clients import make_reader
from tests.support.worker_env import WorkerEnv, category_images

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _log(env: WorkerEnv, isolation_level: str, expect: int) -> dict[str, int]:
    """Image id -> offset of partition 0 of the inspect topic, as a group-less consumer reading
    at ``isolation_level`` sees it (until ``expect`` records or 30 s)."""
    consumer = make_reader(env.settings(MEMKD_KAFKA__ISOLATION_LEVEL=isolation_level).kafka)
    tp = TopicPartition(env.inspect, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    found: dict[str, int] = {}
    deadline = time.monotonic() + 30
    try:
        while len(found) < expect and time.monotonic() < deadline:
            for record in consumer.poll(timeout_ms=500).get(tp, []):
                headers = dict(record.headers or [])
                found[headers["memkd-id"].decode()] = record.offset
    finally:
        consumer.close()
    return found


def test_aborted_images_get_no_answer_and_committed_ones_one_result(
    worker_env: WorkerEnv,
    artifact_v1: Path,
    line_data: Path,
    java_camera: Callable[..., None],
) -> None:
    worker_env.store().publish("A", artifact_v1, who="test")
    files = category_images(line_data)
    images = {"cam-0": files[0], "aborted-1": files[1], "aborted-2": files[2], "cam-3": files[3]}
    java_camera(worker_env, "none", images, transactional_id=f"gateway-{worker_env.group}")
    # The aborted images are in the log: the test would see them scored if the worker read them.
    assert set(_log(worker_env, "read_uncommitted", 4)) == set(images)
    committed_log = _log(worker_env, "read_committed", 2)
    assert set(committed_log) == {"cam-0", "cam-3"}

    worker = worker_env.start_thread_worker()
    try:
        results = worker_env.read(worker_env.results, count=2, timeout_s=120)
        deadline = time.monotonic() + 60
        while (worker_env.committed().get(0) or 0) <= committed_log["cam-3"]:
            assert time.monotonic() < deadline, f"no commit past cam-3: {worker_env.committed()}"
            time.sleep(0.5)
        time.sleep(2)  # an answer to an aborted image would have arrived by now
        results = worker_env.read(worker_env.results, count=0, timeout_s=1)
        dead = worker_env.read(worker_env.dlq, count=0, timeout_s=1)
    finally:
        assert worker.stop() == 0
    assert sorted(r["id"] for r in results) == ["cam-0", "cam-3"]
    assert dead == []

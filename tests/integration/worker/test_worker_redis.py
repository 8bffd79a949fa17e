"""Redis down while the worker runs (a private redis-server: the shared one is never stopped).

Held lines keep being scored; a line the worker never loaded is paused, then dead-lettered
``line-unavailable``; when Redis is back the next activation is picked up."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import redis

from tests.support.worker_env import WorkerEnv, category_images, free_port

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(240)]


def _start_redis(port: int, data_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data_dir),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            client.ping()
            return proc
        except redis.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("private redis-server did not start")


@pytest.fixture
def private_redis(tmp_path: Path):
    port = free_port()
    procs = [_start_redis(port, tmp_path)]

    class Handle:
        url = f"redis://127.0.0.1:{port}/0"

        def stop(self) -> None:
            procs[-1].terminate()
            procs[-1].wait(10)

        def start(self) -> None:
            procs.append(_start_redis(port, tmp_path))

    yield Handle()
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_redis_down_held_lines_serve_unloaded_line_dead_letters_then_recovers(
    worker_env: WorkerEnv,
    private_redis,
    artifact_v1: Path,
    artifact_v2: Path,
    line_data: Path,
) -> None:
    url = private_redis.url
    store = worker_env.store(url)
    store.publish("A", artifact_v1, who="test")
    store.publish("B", artifact_v1, who="test")  # exists, never loaded by the worker
    image = category_images(line_data)[0].read_bytes()
    worker = worker_env.start_thread_worker(MEMKD_REDIS__URL=url, MEMKD_WORKER__PRELOAD_LINES="A")
    try:
        worker_env.produce([("a-before", image)], partition=0)
        assert len(worker_env.read(worker_env.results, count=1, timeout_s=60)) == 1

        private_redis.stop()
        worker_env.produce([("b-down", image)], line="B", partition=1)
        worker_env.produce([(f"a-down-{i}", image) for i in range(4)], partition=0)
        results = worker_env.read(worker_env.results, count=5, timeout_s=60)
        assert sorted(r["id"] for r in results) == ["a-before"] + [f"a-down-{i}" for i in range(4)]
        assert {r["model_version"] for r in results} == {"A@1"}
        dlq = worker_env.read(worker_env.dlq, count=1, timeout_s=60)
        assert [(d["headers"]["memkd-id"], d["error"]) for d in dlq] == [
            ("b-down", "line-unavailable")
        ]
        # Paused for worker.line_unavailable_pause_s (3 s here) before giving up: from the
        # request's own send time to the dead letter's, both stamped by Kafka.
        sent_ms = int(dlq[0]["headers"]["memkd-sent-at"])
        assert dlq[0]["kafka"]["timestamp_ms"] - sent_ms >= 3000

        private_redis.start()
        store = worker_env.store(url)
        assert store.current("A") == 1  # the private Redis kept its data (append-only file)
        version = store.publish("A", artifact_v2, who="test")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if worker.worker.engine.held_lines().get("A") == version:
                break
            time.sleep(0.5)
        worker_env.produce([("a-after", image)], partition=0)
        results = worker_env.read(worker_env.results, count=6, timeout_s=60)
    finally:
        assert worker.stop() == 0
    after = [r for r in results if r["id"] == "a-after"]
    assert [r["model_version"] for r in after] == [f"A@{version}"]

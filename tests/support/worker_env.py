"""A private Kafka stream and worker processes for the worker's integration tests.

``WorkerEnv`` names one test's topics, consumer group and Redis prefix and starts workers on
them, either in-process (``ThreadWorker``: a thread running ``Worker.run``) or as
``memkd-worker`` subprocesses (needed for SIGTERM and kill -9). The fixtures that create and
clean up an environment are in ``tests/integration/worker/conftest.py``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

__all__ = [
    "KAFKA",
    "REDIS_URL",
    "REPO",
    "WORKER_BIN",
    "ThreadWorker",
    "WorkerEnv",
    "category_images",
    "free_port",
    "wait_ready",
]

# Where the shared services are: the same variables the service reads (``make test`` sets them).
KAFKA = os.environ.get("MEMKD_KAFKA__BOOTSTRAP_SERVERS") or "127.0.0.1:39092"
REDIS_URL = os.environ.get("MEMKD_REDIS__URL") or "redis://127.0.0.1:36379/0"
REPO = Path(__file__).resolve().parents[2]
WORKER_BIN = REPO / ".venv" / "bin" / "memkd-worker"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def category_images(line_data: Path) -> list[Path]:
    return sorted((line_data / "test").rglob("*.png"))


@dataclass
class WorkerEnv:
    """Names and settings of one test's private stream."""

    suffix: str
    partitions: int
    env: dict[str, str]
    procs: list[subprocess.Popen] = field(default_factory=list)
    kafka: str = KAFKA

    @property
    def inspect(self) -> str:
        return self.env["MEMKD_KAFKA__INSPECT_TOPIC"]

    @property
    def results(self) -> str:
        return self.env["MEMKD_KAFKA__RESULTS_TOPIC"]

    @property
    def dlq(self) -> str:
        return self.env["MEMKD_KAFKA__DLQ_TOPIC"]

    @property
    def group(self) -> str:
        return self.env["MEMKD_KAFKA__GROUP_ID"]

    def settings(self, **extra: str) -> Any:
        """Settings as a worker would load them from this environment (+ ``extra``)."""
        from memkd_stream.settings import load_settings

        env = {**self.env, **extra}
        clean = {k: v for k, v in os.environ.items() if not k.startswith("MEMKD_")}
        with _ENV_LOCK, mock.patch.dict(os.environ, {**clean, **env}, clear=True):
            return load_settings()

    def store(self, redis_url: str | None = None) -> Any:
        from memkd_stream.lines.store import LineStore

        settings = self.settings(**({"MEMKD_REDIS__URL": redis_url} if redis_url else {}))
        return LineStore.from_settings(settings.redis)

    # ------------------------------------------------------------------ workers
    def start_thread_worker(self, **extra: str) -> ThreadWorker:
        return ThreadWorker.start(self.settings(**extra))

    def spawn_worker(self, log_path: Path, **extra: str) -> subprocess.Popen:
        env = {**os.environ, **self.env, **extra}
        env.setdefault("MEMKD_METRICS__PORT", str(free_port()))
        env["MEMKD_LOG__FORMAT"] = "json"
        log = log_path.open("ab")
        proc = subprocess.Popen(
            [str(WORKER_BIN)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
        )
        proc.metrics_port = int(env["MEMKD_METRICS__PORT"])  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    # ------------------------------------------------------------------ kafka
    def produce(
        self,
        images: list[tuple[str, bytes]],
        *,
        line: str | bytes | None = "A",
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> None:
        """Send (id, bytes) pairs; a None id sends no memkd-id header."""
        from memkd_stream.broker.clients import make_producer

        settings = self.settings()
        producer = make_producer(settings.kafka)
        try:
            futures = []
            key = line.encode() if isinstance(line, str) else line
            for image_id, value in images:
                hs = list(headers or [])
                if image_id is not None:
                    hs.append(("memkd-id", image_id.encode()))
                hs.append(("memkd-sent-at", str(int(time.time() * 1000)).encode()))
                futures.append(
                    producer.send(
                        self.inspect, key=key, value=value, headers=hs, partition=partition
                    )
                )
            producer.flush(timeout=30)
            for f in futures:
                f.get(timeout=5)
        finally:
            producer.close(timeout=5)

    def answered(self, want: set[str], timeout_s: float) -> list[dict[str, Any]]:
        """Every result so far, read again until they answer every id in ``want`` (at least
        once) or the timeout; the caller checks what is missing."""
        deadline = time.monotonic() + timeout_s
        results: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            results = self.read(self.results, count=0, timeout_s=1)
            if want <= {r["id"] for r in results}:
                break
            time.sleep(0.5)
        return results

    def read(self, topic: str, *, count: int, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        """Records of ``topic`` (results parsed, dead letters as headers) until ``count`` or
        the timeout; waits a moment more to catch any extra (duplicate) record."""
        from memkd_stream.broker.results import read_results

        settings = self.settings()
        deadline = time.monotonic() + timeout_s
        docs: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            docs = read_results(settings.kafka, topic=topic, follow=False, from_beginning=True)
            if len(docs) >= count:
                break
            time.sleep(0.5)
        return docs

    def committed(self) -> dict[int, int | None]:
        """The group's committed offsets, read with the admin client: a consumer built with the
        group's id, polled every half second, kept the workers' group rebalancing."""
        from kafka import KafkaAdminClient, TopicPartition

        tps = [TopicPartition(self.inspect, p) for p in range(self.partitions)]
        admin = KafkaAdminClient(bootstrap_servers=self.kafka)
        try:
            found = admin.list_group_offsets({self.group: tps}).get(self.group, {})
        finally:
            admin.close()
        return {
            tp.partition: (found[tp].offset if tp in found and found[tp].offset >= 0 else None)
            for tp in tps
        }

    def committed_through_end(self, timeout_s: float = 30.0) -> dict[int, int | None]:
        """The group's committed offsets once they reach the end of every partition, or as they
        stand after ``timeout_s`` (a commit round can be put off by a rebalance under load)."""
        deadline = time.monotonic() + timeout_s
        while True:
            committed, ends = self.committed(), self.end_offsets()
            if all((committed[p] or 0) == end for p, end in ends.items()):
                return committed
            if time.monotonic() > deadline:
                return committed
            time.sleep(0.5)

    def end_offsets(self) -> dict[int, int]:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=self.kafka)
        try:
            tps = [TopicPartition(self.inspect, p) for p in range(self.partitions)]
            return {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
        finally:
            consumer.close()


_ENV_LOCK = threading.Lock()


def wait_ready(proc: subprocess.Popen, timeout_s: float = 90.0) -> None:
    """Wait until a spawned worker answers /readyz with 200 (teachers loaded, broker up)."""
    import urllib.error
    import urllib.request

    url = f"http://127.0.0.1:{proc.metrics_port}/readyz"  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise AssertionError("worker not ready in time")


class ThreadWorker:
    """A ``Worker`` running in a thread of the test process (fast; no signals)."""

    def __init__(
        self, worker: Any, thread: threading.Thread, result: dict[str, int], swapper: Any
    ) -> None:
        self.worker = worker
        self.thread = thread
        self.result = result
        self.swapper = swapper

    @classmethod
    def start(cls, settings: Any) -> ThreadWorker:
        from memkd_stream.lines.store import LineStore
        from memkd_stream.worker.app import Worker
        from memkd_stream.worker.engine import Engine
        from memkd_stream.worker.hot_swap import HotSwapper
        from memkd_stream.worker.metrics import WorkerMetrics

        metrics = WorkerMetrics()
        store = LineStore.from_settings(settings.redis)
        engine = Engine(settings.model, settings.worker, store, metrics=metrics)
        engine.preload(list(settings.worker.preload_lines))
        worker = Worker(settings, engine, metrics=metrics)
        swapper = HotSwapper(store, engine, settings.worker.refresh_interval_s)
        swapper.prime()
        swapper.start()
        result: dict[str, int] = {}
        thread = threading.Thread(
            target=lambda: result.setdefault("code", worker.run()), daemon=True
        )
        thread.start()
        return cls(worker, thread, result, swapper)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        self.worker.stop()
        self.thread.join(timeout_s)
        self.swapper.stop()
        return self.result.get("code")

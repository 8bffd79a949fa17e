"""Fixtures for the worker's integration tests: real Kafka + Redis, isolated per test.

Every test gets its own topics, consumer group and Redis key prefix (``WorkerEnv``), so tests
and other helpers sharing the one broker never see each other's records. Workers run either
in-process (a thread running ``Worker.run``) or as ``memkd-worker`` subprocesses (needed for
SIGTERM and kill -9). Line models are tiny lite0 artifacts trained once per session.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

# Where the shared services are: the same variables the service reads (``make test`` sets them).
KAFKA = os.environ.get("MEMKD_KAFKA__BOOTSTRAP_SERVERS") or "127.0.0.1:39092"
REDIS_URL = os.environ.get("MEMKD_REDIS__URL") or "redis://127.0.0.1:36379/0"
REPO = Path(__file__).resolve().parents[3]
WORKER_BIN = REPO / ".venv" / "bin" / "memkd-worker"


def _reachable(hostport: str) -> bool:
    host, port = hostport.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session", autouse=True)
def _services() -> None:
    redis_hostport = REDIS_URL.split("//", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    for name, where in (("Kafka", KAFKA), ("Redis", redis_hostport)):
        if not _reachable(where):
            pytest.fail(
                f"{name} does not answer at {where}: start it with `make services-up` "
                "(or run the whole suite with `make test`)",
                pytrace=False,
            )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- line models
@pytest.fixture(scope="session")
def line_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic category (128 px): train/good, test/good and test/<defect>."""
    from memkd.datasets import synth_dataset

    out = tmp_path_factory.mktemp("worker-data")
    (cat,) = synth_dataset(
        out, categories=("grass",), n_train=16, n_test_good=4, n_test_bad=4, size=128
    )
    return cat


def _memkd_fingerprint() -> str:
    """Hash of the model library's sources: a cached artifact is reused only by the same code."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((REPO / "model" / "memkd").rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _train(line_data: Path, out: Path, seed: int) -> Path:
    """A tiny lite0 line model (64 px input, a few steps), cached under .cache/ per memkd
    version: training competes for the CPU with everything else the suite runs."""
    import shutil

    cache = REPO / ".cache" / "worker-test-artifacts" / _memkd_fingerprint()
    cached = cache / f"line-{seed}.safetensors"
    if cached.is_file() and cached.with_suffix(".safetensors.sha256").is_file():
        return cached
    path = _train_fresh(line_data, out, seed)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".line-{seed}.{os.getpid()}"
    shutil.copyfile(path, tmp)
    os.replace(tmp, cached)
    sidecar = Path(str(path) + ".sha256")
    if sidecar.is_file():
        shutil.copyfile(sidecar, str(cached) + ".sha256")
    return cached


def _train_fresh(line_data: Path, out: Path, seed: int) -> Path:
    try:
        from tests.support.models import tiny_artifact  # LINES' shared helper when present
    except ImportError:
        tiny_artifact = None
    if tiny_artifact is not None:
        try:
            return Path(tiny_artifact(out, category="grass", seed=seed))
        except TypeError:
            pass
    import torch
    from memkd.config import ModelConfig, TrainConfig
    from memkd.train import fit

    torch.manual_seed(seed)
    images = sorted((line_data / "train" / "good").glob("*.png"))
    result = fit(images, ModelConfig(input_size=64), TrainConfig(steps=8, batch_size=8, seed=seed))
    path = out / f"line-{seed}.safetensors"
    result.model.save(path)
    return path


@pytest.fixture(scope="session")
def artifact_v1(tmp_path_factory: pytest.TempPathFactory, line_data: Path) -> Path:
    return _train(line_data, tmp_path_factory.mktemp("art-v1"), seed=0)


@pytest.fixture(scope="session")
def artifact_v2(tmp_path_factory: pytest.TempPathFactory, line_data: Path) -> Path:
    return _train(line_data, tmp_path_factory.mktemp("art-v2"), seed=1)


def category_images(line_data: Path) -> list[Path]:
    return sorted((line_data / "test").rglob("*.png"))


# --------------------------------------------------------------------------- environment
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
        from memkd_stream.line_store import LineStore

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
        from memkd_stream.kafka_clients import make_producer

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

    def read(self, topic: str, *, count: int, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        """Records of ``topic`` (results parsed, dead letters as headers) until ``count`` or
        the timeout; waits a moment more to catch any extra (duplicate) record."""
        from memkd_stream.cli.stream import read_results

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
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(
            bootstrap_servers=self.kafka, group_id=self.group, enable_auto_commit=False
        )
        try:
            return {
                p: consumer.committed(TopicPartition(self.inspect, p))
                for p in range(self.partitions)
            }
        finally:
            consumer.close()

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
        from memkd_stream.engine import Engine
        from memkd_stream.hot_swap import HotSwapper
        from memkd_stream.line_store import LineStore
        from memkd_stream.metrics import WorkerMetrics
        from memkd_stream.worker import Worker

        metrics = WorkerMetrics()
        store = LineStore.from_settings(settings.redis)
        engine = Engine(settings.model, settings.worker, store, metrics=metrics)
        engine.preload(list(settings.worker.preload_lines))
        worker = Worker(settings, engine, metrics=metrics)
        swapper = HotSwapper(store, engine, settings.worker.refresh_interval_s, metrics=metrics)
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


@pytest.fixture
def worker_env(request: pytest.FixtureRequest) -> Iterator[WorkerEnv]:
    """A private stream: 3-partition topics, a group and a Redis prefix for this test."""
    from memkd_stream.topics import ensure_topics

    suffix = uuid.uuid4().hex[:10]
    partitions = 3
    env = {
        "MEMKD_KAFKA__BOOTSTRAP_SERVERS": KAFKA,
        "MEMKD_KAFKA__INSPECT_TOPIC": f"wtest-{suffix}.inspect",
        "MEMKD_KAFKA__RESULTS_TOPIC": f"wtest-{suffix}.results",
        "MEMKD_KAFKA__DLQ_TOPIC": f"wtest-{suffix}.dlq",
        "MEMKD_KAFKA__GROUP_ID": f"wtest-{suffix}",
        "MEMKD_KAFKA__PARTITIONS": str(partitions),
        "MEMKD_KAFKA__UNREACHABLE_TIMEOUT_S": "20",
        "MEMKD_REDIS__URL": REDIS_URL,
        "MEMKD_REDIS__KEY_PREFIX": f"wtest:{suffix}:",
        "MEMKD_REDIS__SOCKET_TIMEOUT_S": "1",
        "MEMKD_MODEL__DEVICE": "cpu",
        "MEMKD_WORKER__MAX_BATCH": "4",
        "MEMKD_WORKER__MAX_WAIT_MS": "20",
        "MEMKD_WORKER__DECODE_THREADS": "2",
        "MEMKD_WORKER__LINE_UNAVAILABLE_PAUSE_S": "3",
        "MEMKD_WORKER__REFRESH_INTERVAL_S": "2",
        "MEMKD_WORKER__DRAIN_GRACE_S": "15",
        "MEMKD_WORKER__REBALANCE_BUDGET_S": "5",
        "MEMKD_WORKER__WORKER_ID": f"w-{suffix}",
        "MEMKD_METRICS__HOST": "127.0.0.1",
        "MEMKD_LOG__LEVEL": "INFO",
    }
    wenv = WorkerEnv(suffix=suffix, partitions=partitions, env=env)
    ensure_topics(wenv.settings().kafka, partitions=partitions)
    yield wenv
    for proc in wenv.procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    _cleanup(wenv)


def _cleanup(wenv: WorkerEnv) -> None:
    try:
        import redis
        from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=KAFKA)
        try:
            admin.delete_topics([wenv.inspect, wenv.results, wenv.dlq])
        finally:
            admin.close()
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(f"wtest:{wenv.suffix}:*"))
        if keys:
            client.delete(*keys)
    except Exception as exc:  # cleanup is best effort
        print(f"cleanup failed: {exc}", file=sys.stderr)

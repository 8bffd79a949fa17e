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
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.models import LITE0
from tests.support.worker_env import KAFKA, REDIS_URL, REPO, WorkerEnv


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
    result = fit(
        images,
        ModelConfig(backbone=LITE0, input_size=64),
        TrainConfig(steps=8, batch_size=8, seed=seed),
    )
    path = out / f"line-{seed}.safetensors"
    result.model.save(path)
    return path


@pytest.fixture(scope="session")
def artifact_v1(tmp_path_factory: pytest.TempPathFactory, line_data: Path) -> Path:
    return _train(line_data, tmp_path_factory.mktemp("art-v1"), seed=0)


@pytest.fixture(scope="session")
def artifact_v2(tmp_path_factory: pytest.TempPathFactory, line_data: Path) -> Path:
    return _train(line_data, tmp_path_factory.mktemp("art-v2"), seed=1)


@pytest.fixture(scope="session")
def java_camera(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., None]:
    """``java_camera(env, compression, {id: file}, transactional_id=None)``: the official Java
    client producing images to partition 0 of the env's inspect topic, compiled here from
    tests/integration/clients. With a ``transactional_id`` it is an exactly-once gateway whose
    images with ids starting ``aborted-`` are written in transactions it aborts."""
    lib = REPO / "deploy" / "local" / "lib"
    classes = tmp_path_factory.mktemp("java-camera")
    source = REPO / "tests" / "integration" / "clients" / "CameraProducer.java"
    subprocess.run(
        ["javac", "-d", str(classes), "-cp", f"{lib}/*", str(source)], check=True, timeout=120
    )

    def produce(
        env: WorkerEnv,
        compression: str,
        images: dict[str, Path],
        transactional_id: str | None = None,
    ) -> None:
        pairs = [f"{image_id}={path}" for image_id, path in images.items()]
        options = [f"-Dcamera.transactional.id={transactional_id}"] if transactional_id else []
        command = ["java", *options, "-cp", f"{classes}:{lib}/*", "CameraProducer"]
        subprocess.run(
            [*command, env.kafka, env.inspect, "A", compression, *pairs],
            check=True,
            timeout=120,
            capture_output=True,
        )

    return produce


# --------------------------------------------------------------------------- environment
@pytest.fixture
def worker_env(request: pytest.FixtureRequest) -> Iterator[WorkerEnv]:
    """A private stream: 3-partition topics, a group and a Redis prefix for this test."""
    from memkd_stream.broker.topics import ensure_topics

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
        "MEMKD_REDIS__UNREACHABLE_TIMEOUT_S": "3",
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

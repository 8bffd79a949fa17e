"""The broker goes away mid-stream (a private Kafka + Redis pair: the shared ones are never
stopped). The worker exits 3 once ``kafka.unreachable_timeout_s`` has passed; what it committed
covers only delivered results; a successor answers every request after the broker is back."""

from __future__ import annotations

import signal
import time
from collections import defaultdict
from pathlib import Path

import pytest

from tests.support.private_services import PrivateServices
from tests.support.worker_env import WorkerEnv, category_images, wait_ready

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.faults,
    pytest.mark.timeout(420),
]


@pytest.fixture
def private_services(tmp_path: Path):
    services = PrivateServices(tmp_path / "var")
    services.up()
    try:
        yield services
    finally:
        services.down()


def test_broker_lost_mid_stream_exits_3_and_commits_only_delivered(
    private_services: PrivateServices, artifact_v1: Path, line_data: Path, tmp_path: Path
) -> None:
    from memkd_stream.broker.topics import ensure_topics

    bootstrap = f"127.0.0.1:{private_services.kafka_port}"
    env = WorkerEnv(
        suffix="outage",
        partitions=3,
        env={
            "MEMKD_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "MEMKD_KAFKA__INSPECT_TOPIC": "outage.inspect",
            "MEMKD_KAFKA__RESULTS_TOPIC": "outage.results",
            "MEMKD_KAFKA__DLQ_TOPIC": "outage.dlq",
            "MEMKD_KAFKA__GROUP_ID": "outage",
            "MEMKD_KAFKA__UNREACHABLE_TIMEOUT_S": "5",
            "MEMKD_KAFKA__REQUEST_TIMEOUT_MS": "4000",
            "MEMKD_REDIS__URL": f"redis://127.0.0.1:{private_services.redis_port}/0",
            "MEMKD_REDIS__SOCKET_TIMEOUT_S": "1",
            "MEMKD_REDIS__UNREACHABLE_TIMEOUT_S": "3",
            "MEMKD_MODEL__DEVICE": "cpu",
            "MEMKD_WORKER__MAX_BATCH": "2",
            "MEMKD_WORKER__DRAIN_GRACE_S": "10",
            "MEMKD_METRICS__HOST": "127.0.0.1",
        },
        kafka=bootstrap,
    )
    ensure_topics(env.settings().kafka, partitions=3)
    env.store().publish("A", artifact_v1, who="test")
    files = category_images(line_data)
    payload = [(f"o-{i:03d}", files[i % len(files)].read_bytes()) for i in range(60)]
    proc = env.spawn_worker(tmp_path / "worker.log")
    try:
        wait_ready(proc)
        env.produce(payload)
        assert env.read(env.results, count=4, timeout_s=60)
        # Lose the broker only once the worker has committed something, so that the check
        # below ("never past an undelivered record") has commits to look at; when the broker
        # went down between two commit ticks, committing nothing was right but proved nothing.
        deadline = time.monotonic() + 30
        while not any(env.committed().values()):
            assert time.monotonic() < deadline, "the worker committed nothing in 30 s"
            time.sleep(0.2)
        private_services.down()
        lost_at = time.monotonic()
        rc = proc.wait(timeout=90)
        log = (tmp_path / "worker.log").read_text()
        assert rc == 3, log
        assert time.monotonic() - lost_at < 60
        assert "unreachable" in log

        private_services.up()
        committed = env.committed()
        results = env.read(env.results, count=0, timeout_s=1)
        delivered: dict[int, set[int]] = defaultdict(set)
        for r in results:
            delivered[r["source"]["partition"]].add(r["source"]["offset"])
        assert any(committed.values()), committed  # it had committed delivered work
        for p in range(3):
            # never committed past a record whose result was not delivered
            assert set(range(committed[p] or 0)) <= delivered[p], (p, committed[p])

        successor = env.spawn_worker(tmp_path / "worker2.log")
        wait_ready(successor)  # a SIGTERM in the middle of a slow start-up would end it hard
        want = {i for i, _ in payload}
        deadline = time.monotonic() + 150
        seen: set[str] = set()
        while time.monotonic() < deadline and not want <= seen:
            seen = {r["id"] for r in env.read(env.results, count=0, timeout_s=1)}
            time.sleep(1)
        successor.send_signal(signal.SIGTERM)
        assert successor.wait(timeout=30) == 0
        assert want <= seen, f"missing: {sorted(want - seen)}"
    finally:
        for p in env.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)

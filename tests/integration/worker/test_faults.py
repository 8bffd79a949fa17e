"""The fault suite: a worker killed with records in flight, a broker restart, a device that
fails every batch, a dead pipeline thread. Real broker and Redis; the timings are generous
bounds against hangs (the CPUs are shared), the figures themselves are bench/faults.py's.
"""

from __future__ import annotations

import signal
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch

from memkd_stream.broker.topics import ensure_topics
from memkd_stream.errors import ExitCode
from tests.support.private_services import PrivateServices
from tests.support.worker_env import WorkerEnv, category_images, free_port, wait_ready

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(420)]

# The worker's group session timeout in these tests is the default (6 s): a dead worker's
# partitions must move within seconds, not the 45 s of kafka-python's default.
HANDOVER_BOUND_S = 30.0


def _payload(line_data: Path, n: int, prefix: str) -> list[tuple[str, bytes]]:
    files = category_images(line_data)
    return [(f"{prefix}-{i:03d}", files[i % len(files)].read_bytes()) for i in range(n)]


def _produce_everywhere(env: WorkerEnv, payload: list[tuple[str, bytes]]) -> None:
    for p in range(env.partitions):
        env.produce(payload[p :: env.partitions], partition=p)


def _check_duplicates_are_replays(results: list[dict[str, Any]]) -> None:
    """At least once: a duplicate is the same request scored again (same id, same source)."""
    sources: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for r in results:
        sources[r["id"]].add((r["source"]["partition"], r["source"]["offset"]))
    assert all(len(s) == 1 for s in sources.values()), sources


_BACKLOG = 3  # uncommitted records on a partition of the victim's when it is killed


def test_kill_9_with_records_in_flight_hands_over_within_seconds(
    worker_env: WorkerEnv, artifact_v1: Path, line_data: Path, tmp_path: Path
) -> None:
    worker_env.store().publish("A", artifact_v1, who="test")
    slow = {"MEMKD_WORKER__DECODE_THREADS": "1", "MEMKD_WORKER__MAX_BATCH": "2"}
    victim = worker_env.spawn_worker(tmp_path / "w1.log", MEMKD_WORKER__WORKER_ID="w1", **slow)
    peer = worker_env.spawn_worker(tmp_path / "w2.log", MEMKD_WORKER__WORKER_ID="w2", **slow)
    wait_ready(victim)
    wait_ready(peer)
    payload = _payload(line_data, 1200, "k9")
    fed: list[tuple[str, bytes]] = []
    stop_feeding = threading.Event()

    def feed() -> None:
        # Keep every partition supplied until the kill, so the victim always holds records it
        # has not committed, however fast it scores (a fixed batch could be scored and
        # committed before the test first looks).
        for start in range(0, len(payload), 12):
            if stop_feeding.is_set():
                return
            chunk = payload[start : start + 12]
            _produce_everywhere(worker_env, chunk)
            fed.extend(chunk)

    feeder = threading.Thread(target=feed, name="k9-feeder", daemon=True)
    feeder.start()
    # Kill only once the victim provably holds unfinished work: a partition it answers for
    # whose committed offset is below the end of the partition.
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline, "the victim never had records in flight"
        results = worker_env.read(worker_env.results, count=0, timeout_s=1)
        victims = {r["source"]["partition"] for r in results if r["worker"] == "w1"}
        committed, ends = worker_env.committed(), worker_env.end_offsets()
        # A backlog of several records, so the victim cannot finish and commit them all in the
        # moment between this check and the kill.
        behind = {p for p in victims if ends[p] - (committed[p] or 0) >= _BACKLOG}
        if behind:
            break
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    killed_ms = time.time() * 1000
    stop_feeding.set()
    feeder.join(timeout=30)
    assert not feeder.is_alive()
    want = {i for i, _ in fed}
    victim.wait(10)
    # What the victim left uncommitted, read once it is dead (the peer cannot have taken its
    # partitions over yet: that waits the session timeout).
    committed = worker_env.committed()
    behind = {p for p in behind if (committed[p] or 0) < ends[p]}
    assert behind, "the victim committed all its records before the kill landed"
    results = worker_env.answered(want, timeout_s=180)

    def taken_over(results: list[dict]) -> list[float]:
        return [
            r["kafka"]["timestamp_ms"]
            for r in results
            if r["worker"] == "w2"
            and r["source"]["partition"] in behind
            and r["kafka"]["timestamp_ms"] >= killed_ms
        ]

    # The victim may have answered every record before it died, with the commit still owed:
    # then every id is answered at once, and the peer's replays of the uncommitted records
    # (which it must make) come after. Wait for them.
    deadline = time.monotonic() + 90
    while not taken_over(results) and time.monotonic() < deadline:
        time.sleep(0.5)
        results = worker_env.read(worker_env.results, count=0, timeout_s=1)
    peer.send_signal(signal.SIGTERM)
    assert peer.wait(timeout=30) == 0
    assert {r["id"] for r in results} == want  # nothing lost
    _check_duplicates_are_replays(results)
    assert taken_over(results), "the peer never re-processed what the victim left uncommitted"
    handover_s = (min(taken_over(results)) - killed_ms) / 1000
    assert handover_s < HANDOVER_BOUND_S, f"the peer took {handover_s:.1f} s"


def test_a_broker_restart_shorter_than_the_budget_is_ridden_out(
    tmp_path: Path, artifact_v1: Path, line_data: Path
) -> None:
    services = PrivateServices(tmp_path / "var")
    services.up()
    worker = None
    try:
        env = WorkerEnv(
            suffix="restart",
            partitions=3,
            env={
                "MEMKD_KAFKA__BOOTSTRAP_SERVERS": services.bootstrap,
                "MEMKD_KAFKA__INSPECT_TOPIC": "restart.inspect",
                "MEMKD_KAFKA__RESULTS_TOPIC": "restart.results",
                "MEMKD_KAFKA__DLQ_TOPIC": "restart.dlq",
                "MEMKD_KAFKA__GROUP_ID": "restart",
                "MEMKD_KAFKA__UNREACHABLE_TIMEOUT_S": "90",
                "MEMKD_REDIS__URL": services.redis_url,
                "MEMKD_MODEL__DEVICE": "cpu",
                "MEMKD_WORKER__DRAIN_GRACE_S": "10",
                "MEMKD_METRICS__HOST": "127.0.0.1",
            },
            kafka=services.bootstrap,
        )
        ensure_topics(env.settings().kafka, partitions=3)
        env.store().publish("A", artifact_v1, who="test")
        worker = env.spawn_worker(tmp_path / "worker.log")
        wait_ready(worker)
        before = _payload(line_data, 6, "before")
        env.produce(before)
        assert len(env.answered({i for i, _ in before}, timeout_s=90)) >= len(before)

        services.stop_kafka()
        time.sleep(8)  # down for a while, well inside kafka.unreachable_timeout_s
        services.up()
        back_ms = time.time() * 1000
        after = _payload(line_data, 6, "after")
        env.produce(after)
        results = env.answered({i for i, _ in before + after}, timeout_s=120)
        assert worker.poll() is None, "the worker exited although the broker came back"
        first_after = min(r["kafka"]["timestamp_ms"] for r in results if r["id"] in dict(after))
        recovered_s = (first_after - back_ms) / 1000
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        services.down()
    assert {r["id"] for r in results} == {i for i, _ in before + after}
    assert recovered_s < 30, f"the first result after the restart came {recovered_s:.1f} s later"


def test_a_device_that_fails_every_batch_stops_the_worker_with_exit_4(
    worker_env: WorkerEnv,
    artifact_v1: Path,
    line_data: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from memkd.line_model import LineModel

    def broken(self: Any, teacher: Any, batch: torch.Tensor) -> Any:
        raise RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling cublasSgemm")

    worker_env.store().publish("A", artifact_v1, who="test")
    worker = worker_env.start_thread_worker()
    monkeypatch.setattr(LineModel, "score", broken)
    worker_env.produce(_payload(line_data, 6, "dev"), partition=0)
    worker.thread.join(timeout=120)
    code = worker.result.get("code")
    worker.swapper.stop()
    assert code == ExitCode.DEVICE_FAULT, worker.worker.state.fatal
    assert worker.worker.state.fatal.startswith("device fault")
    registry = worker.worker.ctx.metrics.registry
    assert registry.get_sample_value("memkd_device_faults_total") == 1
    dead = worker_env.read(worker_env.dlq, count=0, timeout_s=2)
    assert not [d for d in dead if d["error"] == "model-error"]  # not a dead-letter black hole
    assert worker_env.committed()[0] in (None, 0)  # the records stay for a working device


# The test kills the publisher thread on purpose; pytest would report its death as a warning.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_publisher_thread_fails_the_health_check(
    worker_env: WorkerEnv,
    artifact_v1: Path,
    line_data: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from memkd_stream.worker.health import HealthServer
    from memkd_stream.worker.pipeline import Pipeline

    def dies(self: Any, *args: Any) -> None:
        raise SystemExit("the publisher thread dies")  # not an Exception: nothing catches it

    worker_env.store().publish("A", artifact_v1, who="test")
    worker = worker_env.start_thread_worker(
        MEMKD_WORKER__STUCK_AFTER_S="3", MEMKD_WORKER__DRAIN_GRACE_S="4"
    )
    ctx = worker.worker.ctx
    server = HealthServer(
        "127.0.0.1", free_port(), ctx.metrics.registry, ctx.heartbeats, worker.worker.ready_checks
    ).start()
    server.started()
    try:
        monkeypatch.setattr(Pipeline, "_publish_one", dies)
        worker_env.produce(_payload(line_data, 1, "pub"), partition=0)
        deadline = time.monotonic() + 60
        status = body = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz") as resp:
                    status, body = resp.status, resp.read().decode()
            except urllib.error.HTTPError as exc:
                status, body = exc.code, exc.read().decode()
            if status == 503:
                break
            time.sleep(0.5)
    finally:
        server.stop()
        worker.stop()
    assert status == 503 and "publisher" in (body or ""), body

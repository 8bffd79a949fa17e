"""``memkd-stream topics create | produce | results`` and ``memkd-worker`` as users run them,
on the real broker: the happy path, missing topics, a dead broker, help and SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.worker_env import REPO, WORKER_BIN, WorkerEnv, wait_ready

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CLI = str(REPO / ".venv" / "bin" / "memkd-stream")
WORKER = str(WORKER_BIN)


def _run(env: WorkerEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args],
        env={**os.environ, **env.env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def test_topics_produce_results(worker_env: WorkerEnv, artifact_v1: Path, line_data: Path) -> None:
    again = _run(worker_env, "topics", "create", "--json")
    assert again.returncode == 0, again.stderr
    statuses = json.loads(again.stdout)
    assert {s["topic"] for s in statuses} == {
        worker_env.inspect,
        worker_env.results,
        worker_env.dlq,
    }
    assert not any(s["created"] for s in statuses)  # the fixture made them: idempotent

    worker_env.store().publish("A", artifact_v1, who="test")
    folder = line_data / "test"
    count = len(list(folder.rglob("*.png")))
    sent = _run(
        worker_env, "produce", "--line", "A", str(folder), "--id-from-filename",
        "--header", "station=7", "--json",
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["sent"] == count

    worker = worker_env.start_thread_worker()
    try:
        worker_env.read(worker_env.results, count=count, timeout_s=90)
    finally:
        assert worker.stop() == 0
    shown = _run(worker_env, "results", "--line", "A", "--json")
    assert shown.returncode == 0, shown.stderr
    docs = json.loads(shown.stdout)
    assert len(docs) == count
    assert {d["id"] for d in docs} == {
        p.relative_to(folder).as_posix() for p in folder.rglob("*.png")
    }
    assert all(d["headers"]["station"] == "7" for d in docs)
    assert all("data" not in d["mask"] for d in docs)  # the JSON view leaves the PNG out
    table = _run(worker_env, "results", "--max", "3")
    assert table.returncode == 0, table.stderr
    assert "score" in table.stdout and "A@1" in table.stdout
    assert "3 records on" in table.stdout
    one = _run(worker_env, "produce", "--line", "A", str(next(folder.rglob("*.png"))))
    assert one.returncode == 0, one.stderr
    assert one.stdout.startswith("sent 1 image (")


def test_missing_topics_fail_fast_with_a_hint(worker_env: WorkerEnv, tmp_path: Path) -> None:
    """A missing topic is an error (exit 1), not an empty table or a minute-long hang."""
    image = tmp_path / "x.png"
    image.write_bytes(b"not really a png")
    gone = {
        "MEMKD_KAFKA__RESULTS_TOPIC": f"{worker_env.results}.missing",
        "MEMKD_KAFKA__INSPECT_TOPIC": f"{worker_env.inspect}.missing",
    }
    missing = WorkerEnv(worker_env.suffix, worker_env.partitions, {**worker_env.env, **gone})
    for args in (("results",), ("produce", "--line", "A", str(image)), ("dlq", "replay")):
        started = time.monotonic()
        done = _run(missing, *args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert done.stderr.count("\n") == 1, done.stderr  # one line, no traceback
        assert "[topic-missing]" in done.stderr and "memkd-stream topics create" in done.stderr
        assert ".missing" in done.stderr
        assert time.monotonic() - started < 20


def test_dead_broker_fails_in_one_line_within_the_connect_timeout(
    worker_env: WorkerEnv, tmp_path: Path
) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(b"x")
    dead = {"MEMKD_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    down = WorkerEnv(worker_env.suffix, worker_env.partitions, {**worker_env.env, **dead})
    for args in (
        ("topics", "create"),
        ("results",),
        ("results", "--follow"),
        ("produce", "--line", "A", str(image)),
        ("dlq", "replay"),
    ):
        started = time.monotonic()
        done = _run(down, *args, "--connect-timeout", "2")
        elapsed = time.monotonic() - started
        assert done.returncode == 1, (args, done.stderr)
        assert done.stderr.startswith("memkd-stream: error: Kafka at 127.0.0.1:1 "), done.stderr
        assert done.stderr.rstrip().endswith("[kafka-unavailable]")
        assert done.stderr.count("\n") == 1, done.stderr
        assert elapsed < 12, (args, elapsed)  # 2 s budget + interpreter start on a busy box


def test_worker_help_and_version() -> None:
    shown = subprocess.run([WORKER, "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0
    for needle in ("/metrics", "/healthz", "/readyz", "MEMKD_METRICS__PORT", "9400", "exit codes"):
        assert needle in shown.stdout, needle
    codes = {int(line.split()[0]) for line in shown.stdout.split("exit codes:")[1].splitlines()
             if line[:3].strip().isdigit()}  # fmt: skip
    assert codes == {0, 1, 2, 3, 4}, shown.stdout  # the worker's own statuses (README table)
    version = subprocess.run([WORKER, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("memkd-worker ")


def test_worker_logs_sigterm_as_it_arrives(worker_env: WorkerEnv, tmp_path: Path) -> None:
    log_path = tmp_path / "worker.log"
    proc = worker_env.spawn_worker(log_path)
    wait_ready(proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    events = [json.loads(x) for x in log_path.read_text().splitlines() if x.startswith("{")]
    names = [e.get("event") for e in events]
    got = [e for e in events if e.get("event") == "signal received; draining then exiting"]
    assert got and got[0]["signal"] == "SIGTERM", names
    assert names.index(got[0]["event"]) < names.index("worker exited")


def test_a_stop_that_cannot_finish_ends_hard_with_exit_1(tmp_path: Path) -> None:
    """SIGTERM while the consumer is still trying to reach a dead broker: nothing can drain, so
    after ``worker.drain_grace_s`` + 5 s the process ends hard, says so, and exits 1."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MEMKD_")},
        "MEMKD_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",  # nothing listens there
        "MEMKD_KAFKA__UNREACHABLE_TIMEOUT_S": "300",  # so it keeps trying through the test
        "MEMKD_WORKER__DRAIN_GRACE_S": "1",
        "MEMKD_REDIS__URL": "redis://127.0.0.1:1/0",
        "MEMKD_METRICS__HOST": "127.0.0.1",
        "MEMKD_METRICS__PORT": "0",
    }
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([WORKER], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        # Start-up is over and the worker's Kafka clients are failing to connect.
        while "ECONNREFUSED" not in log_path.read_text().partition("lines preloaded")[2]:
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert proc.wait(timeout=60) == 1
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 5 < took < 30, took  # grace 1 s + 5 s margin; generous for a busy machine
    events = [json.loads(x) for x in log_path.read_text().splitlines() if x.startswith("{")]
    ended = [e for e in events if e.get("event") == "ending hard"]
    assert ended and ended[0]["exit_code"] == 1 and "drain_grace_s" in ended[0]["reason"]

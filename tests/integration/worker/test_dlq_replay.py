"""``memkd-stream dlq replay`` on the real broker and Redis, with a real worker: dead letters come
back once each with their original id, the replay count bounds a record that keeps failing, and
dead letters that lost their image are listed and never replayed."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from memkd_stream.contract.replay import MAX_REPLAYS
from tests.support.worker_env import REPO, WorkerEnv, category_images

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

CLI = str(REPO / ".venv" / "bin" / "memkd-stream")
# The first worker's record limit: a small PNG fits in a dead letter, a camera image does not.
SMALL_LIMIT = 8192


def _cli(env: WorkerEnv, *args: str) -> Any:
    """Run memkd-stream with --json; the parsed output (fails the test on a non-zero exit)."""
    done = subprocess.run(
        [CLI, *args, "--json"],
        env={**os.environ, **env.env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, (args, done.stderr)
    return json.loads(done.stdout)


def _small_png(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (128, 128), (shade, 140, 60)).save(buf, format="PNG")
    return buf.getvalue()


def _inspect_total(env: WorkerEnv) -> int:
    return sum(env.end_offsets().values())


def _iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _wait_for(env: WorkerEnv, topic: str, count: int) -> list[dict[str, Any]]:
    docs = env.read(topic, count=count, timeout_s=90)
    assert len(docs) >= count, f"{len(docs)} records on {topic}, expected {count}"
    return docs


def test_dead_letters_come_back_once_and_dropped_ones_are_listed(
    worker_env: WorkerEnv, artifact_v1: Path, line_data: Path
) -> None:
    camera_image = category_images(line_data)[0].read_bytes()
    assert len(camera_image) > SMALL_LIMIT
    small = [(f"b-{i}", _small_png(60 + i)) for i in range(3)]
    assert all(len(image) < SMALL_LIMIT // 2 for _, image in small)

    # Line B does not exist yet: every image of it is dead-lettered unknown-line; the camera
    # image's dead letter cannot keep it under this worker's record limit.
    worker = worker_env.start_thread_worker(MEMKD_KAFKA__MAX_MESSAGE_BYTES=str(SMALL_LIMIT))
    try:
        worker_env.produce([*small, ("b-big", camera_image)], line="B")
        _wait_for(worker_env, worker_env.dlq, 4)
    finally:
        assert worker.stop() == 0
    before = _cli(worker_env, "results", "--dlq")
    assert {d["id"]: d["replay_count"] for d in before} == {
        "b-0": 0, "b-1": 0, "b-2": 0, "b-big": 0,
    }  # fmt: skip

    worker_env.store().publish("B", artifact_v1, who="test")
    sent_before = _inspect_total(worker_env)
    dry = _cli(worker_env, "dlq", "replay", "--dry-run")
    assert _inspect_total(worker_env) == sent_before  # a dry run sends nothing
    assert (dry["matched"], dry["replayed"], dry["skipped"]) == (4, 3, 1)
    (big,) = [r for r in dry["records"] if r["action"] == "skipped"]
    assert (big["id"], big["reason"]) == ("b-big", "value-dropped")

    replay = _cli(worker_env, "dlq", "replay", "--code", "unknown-line", "--line", "B")
    assert (replay["replayed"], replay["skipped"]) == (3, 1)
    assert _inspect_total(worker_env) == sent_before + 3
    replayed = {r["id"]: r for r in replay["records"] if r["action"] == "replayed"}
    assert sorted(replayed) == ["b-0", "b-1", "b-2"]
    assert all(r["replay_count"] == 1 and ":" in r["to"] for r in replayed.values())

    worker = worker_env.start_thread_worker()
    try:
        results = _wait_for(worker_env, worker_env.results, 3)
        time.sleep(2)  # a duplicate, if there were one, would arrive meanwhile
        results = worker_env.read(worker_env.results, count=3, timeout_s=5)
    finally:
        assert worker.stop() == 0
    assert sorted(r["id"] for r in results) == ["b-0", "b-1", "b-2"]  # once each
    for result in results:
        assert result["model_version"] == "B@1"
        assert result["headers"]["memkd-replay-count"] == "1"
        assert "memkd-error" not in result["headers"]
        assert result["source"]["topic"] == worker_env.inspect  # a new request: a new source
    assert len(_cli(worker_env, "results", "--dlq")) == 4  # nothing new failed


def test_a_record_that_keeps_failing_is_replayed_at_most_the_bound(
    worker_env: WorkerEnv, line_data: Path
) -> None:
    # Line C never exists: each replay is dead-lettered again, one count higher. Each pass
    # starts after the previous one (--since), so it replays only the newest dead letter.
    worker = worker_env.start_thread_worker()
    try:
        worker_env.produce([("c-1", _small_png(90))], line="C")
        _wait_for(worker_env, worker_env.dlq, 1)
        since = "1d"
        for count in range(1, MAX_REPLAYS + 1):
            started = _iso_now()
            replay = _cli(worker_env, "dlq", "replay", "--line", "C", "--since", since)
            assert (replay["replayed"], replay["skipped"]) == (1, 0), replay
            assert replay["records"][0]["replay_count"] == count
            _wait_for(worker_env, worker_env.dlq, count + 1)
            since = started
        bounded = _cli(worker_env, "dlq", "replay", "--line", "C", "--since", since)
    finally:
        assert worker.stop() == 0
    assert (bounded["replayed"], bounded["skipped"]) == (0, 1)
    assert bounded["records"][0]["reason"] == "replay-bound"
    letters = _cli(worker_env, "results", "--dlq")
    assert sorted(d["replay_count"] for d in letters) == list(range(MAX_REPLAYS + 1))
    assert {d["id"] for d in letters} == {"c-1"}  # every replay joined to the original id
    assert {d["error"] for d in letters} == {"unknown-line"}

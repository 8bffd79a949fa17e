"""Late images on the real broker and Redis (DESIGN.md §3): with worker.max_age_ms set, an image
older than that is scored with late_ms or dead-lettered `stale`, as its line's policy says (the
global setting, or the line's override set with `memkd-stream lines late-policy`, which a running
worker picks up from its event)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from memkd_stream.contract.lateness import LatePolicy
from tests.support.worker_env import REPO, ThreadWorker, WorkerEnv, category_images

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CLI = str(REPO / ".venv" / "bin" / "memkd-stream")
MAX_AGE_MS = 120_000  # generous: a fresh image is never this old, even on busy cores
HOUR_MS = 3_600_000


def _send(
    env: WorkerEnv, records: list[tuple[str, str, bytes | None, int | None]], image: bytes
) -> None:
    """(id, line, memkd-sent-at header or None, record timestamp in ms or None) per record."""
    from memkd_stream.broker.clients import make_producer

    producer = make_producer(env.settings().kafka)
    try:
        futures = []
        for image_id, line, sent_at, timestamp_ms in records:
            headers = [("memkd-id", image_id.encode())]
            if sent_at is not None:
                headers.append(("memkd-sent-at", sent_at))
            futures.append(
                producer.send(
                    env.inspect,
                    key=line.encode(),
                    value=image,
                    headers=headers,
                    timestamp_ms=timestamp_ms,
                )
            )
        producer.flush(timeout=30)
        for future in futures:
            future.get(timeout=5)
    finally:
        producer.close(timeout=5)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _cli(env: WorkerEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], env={**os.environ, **env.env}, capture_output=True, text=True, timeout=120
    )


def _late_count(worker: ThreadWorker, line: str, policy: str) -> float:
    registry = worker.worker.ctx.metrics.registry
    value = registry.get_sample_value("memkd_late_images_total", {"line": line, "policy": policy})
    return value or 0.0


def _wait_for_policy(worker: ThreadWorker, line: str, policy: LatePolicy) -> None:
    """Until the running worker holds ``policy`` for ``line`` (its event arrived)."""
    deadline = time.monotonic() + 30
    while worker.worker.engine.late_policies.policy(line) is not policy:
        assert time.monotonic() < deadline, f"the worker never picked up {line}: {policy}"
        time.sleep(0.1)


def test_late_images_are_scored_with_late_ms_under_the_score_policy(
    worker_env: WorkerEnv, artifact_v1: Path, line_data: Path
) -> None:
    worker_env.store().publish("A", artifact_v1, who="test")
    image = category_images(line_data)[0].read_bytes()
    worker = worker_env.start_thread_worker(MEMKD_WORKER__MAX_AGE_MS=str(MAX_AGE_MS))
    try:
        hour_ago = _now_ms() - HOUR_MS
        _send(
            worker_env,
            [
                ("fresh", "A", str(_now_ms()).encode(), None),
                ("old-by-header", "A", str(hour_ago).encode(), None),
                # a malformed memkd-sent-at: the record's own timestamp decides
                ("old-by-timestamp", "A", b"yesterday", hour_ago),
            ],
            image,
        )
        results = worker_env.read(worker_env.results, count=3, timeout_s=90)
        late_scored = _late_count(worker, "A", "score")
    finally:
        assert worker.stop() == 0
    by_id = {r["id"]: r for r in results}
    assert sorted(by_id) == ["fresh", "old-by-header", "old-by-timestamp"]
    assert "late_ms" not in by_id["fresh"]
    for image_id in ("old-by-header", "old-by-timestamp"):
        late = by_id[image_id]["late_ms"]
        # an hour old, minus the maximum age; scored within minutes of being sent
        assert HOUR_MS - MAX_AGE_MS <= late < HOUR_MS - MAX_AGE_MS + 600_000, (image_id, late)
    assert worker_env.read(worker_env.dlq, count=0, timeout_s=1) == []
    assert late_scored == 2


def test_dead_letter_policy_and_per_line_overrides(
    worker_env: WorkerEnv, artifact_v1: Path, line_data: Path
) -> None:
    store = worker_env.store()
    for line in ("A", "B"):
        store.publish(line, artifact_v1, who="test")
    set_b = _cli(worker_env, "lines", "late-policy", "B", "score", "--json")
    assert set_b.returncode == 0, set_b.stderr
    shown = _cli(worker_env, "lines", "late-policy", "B", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["late_policy"] == "score"
    unknown = _cli(worker_env, "lines", "late-policy", "nope", "score")
    assert unknown.returncode == 1 and "nope" in unknown.stderr

    image = category_images(line_data)[0].read_bytes()
    worker = worker_env.start_thread_worker(
        MEMKD_WORKER__MAX_AGE_MS=str(MAX_AGE_MS), MEMKD_WORKER__LATE_POLICY="dead-letter"
    )
    try:
        old = str(_now_ms() - HOUR_MS).encode()
        _send(
            worker_env,
            [
                ("a-old", "A", old, None),  # the global policy: dead-letter
                ("a-fresh", "A", str(_now_ms()).encode(), None),
                ("b-old", "B", old, None),  # B's override read at start: score
            ],
            image,
        )
        worker_env.read(worker_env.results, count=2, timeout_s=90)
        worker_env.read(worker_env.dlq, count=1, timeout_s=30)

        # changed while the worker runs: it follows each change's event
        assert _cli(worker_env, "lines", "late-policy", "A", "score").returncode == 0
        assert _cli(worker_env, "lines", "late-policy", "B", "--clear").returncode == 0
        _wait_for_policy(worker, "A", LatePolicy.SCORE)
        _wait_for_policy(worker, "B", LatePolicy.DEAD_LETTER)
        _send(worker_env, [("a-old-2", "A", old, None), ("b-old-2", "B", old, None)], image)
        results = worker_env.read(worker_env.results, count=3, timeout_s=90)
        dlq = worker_env.read(worker_env.dlq, count=2, timeout_s=60)
        counts = {
            (line, policy): _late_count(worker, line, policy)
            for line in ("A", "B")
            for policy in ("score", "dead-letter")
        }
    finally:
        assert worker.stop() == 0
    by_id = {r["id"]: r for r in results}
    assert sorted(by_id) == ["a-fresh", "a-old-2", "b-old"]
    assert "late_ms" not in by_id["a-fresh"]
    assert by_id["b-old"]["late_ms"] >= HOUR_MS - MAX_AGE_MS
    assert by_id["a-old-2"]["late_ms"] >= HOUR_MS - MAX_AGE_MS
    stale = {d["headers"]["memkd-id"]: d for d in dlq}
    assert sorted(stale) == ["a-old", "b-old-2"]
    assert {d["error"] for d in stale.values()} == {"stale"}
    assert "worker.max_age_ms=120000" in stale["a-old"]["detail"]
    assert counts == {
        ("A", "score"): 1,
        ("A", "dead-letter"): 1,
        ("B", "score"): 1,
        ("B", "dead-letter"): 1,
    }

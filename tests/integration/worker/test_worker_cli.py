"""``memkd-stream topics create | produce | results`` on the real broker, as users run them."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.worker.conftest import REPO, WorkerEnv

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CLI = str(REPO / ".venv" / "bin" / "memkd-stream")


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

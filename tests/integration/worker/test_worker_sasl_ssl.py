"""Authentication for real: the worker and the commands through the broker's SASL_SSL listener.

The right credentials work end to end (produce -> worker -> results, all over SCRAM-SHA-512 +
TLS); a wrong password or a missing CA file is one clear line and exit 2 (a restart cannot help,
the settings must change); the password appears in no log line, at DEBUG either.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from memkd_stream.errors import ExitCode
from tests.support.sasl import SaslListener
from tests.support.worker_env import REPO, WORKER_BIN, WorkerEnv, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CLI = str(REPO / ".venv" / "bin" / "memkd-stream")


def _sasl_env(listener: SaslListener, **changes: str) -> dict[str, str]:
    env = {
        "MEMKD_KAFKA__BOOTSTRAP_SERVERS": listener.bootstrap,
        "MEMKD_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "MEMKD_KAFKA__SASL_MECHANISM": listener.mechanism,
        "MEMKD_KAFKA__SASL_USERNAME": listener.username,
        "MEMKD_KAFKA__SASL_PASSWORD": listener.password,
        "MEMKD_KAFKA__SSL_CAFILE": str(listener.cafile),
    }
    return {**env, **changes}


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], env=env, capture_output=True, text=True, timeout=120, cwd=REPO
    )


def test_the_worker_scores_through_sasl_ssl(
    worker_env: WorkerEnv, kafka_sasl: SaslListener, artifact_v1: Path, line_data: Path
) -> None:
    worker_env.store().publish("A", artifact_v1, who="test")
    worker_env.env.update(_sasl_env(kafka_sasl))  # the worker, the camera and the reader alike
    env = {**os.environ, **worker_env.env}
    folder = line_data / "test" / "good"
    sent = _cli(
        env, "--log-level", "DEBUG", "produce", "--line", "A", str(folder), "--id-from-filename"
    )
    assert sent.returncode == 0, sent.stderr
    assert "KafkaProducer" in sent.stderr  # the client's DEBUG config dump ran...
    assert kafka_sasl.password not in sent.stdout + sent.stderr  # ...without the password
    count = len(list(folder.glob("*.png")))
    worker = worker_env.start_thread_worker()
    try:
        results = worker_env.read(worker_env.results, count=count, timeout_s=120)
    finally:
        assert worker.stop() == 0
    assert sorted(r["id"] for r in results) == sorted(p.name for p in folder.glob("*.png"))


def test_a_wrong_password_is_one_line_and_exit_2_for_commands(
    worker_env: WorkerEnv, kafka_sasl: SaslListener
) -> None:
    env = {
        **os.environ,
        **worker_env.env,
        **_sasl_env(kafka_sasl, MEMKD_KAFKA__SASL_PASSWORD="Wrong-Password-77"),
    }
    for args in (("topics", "create"), ("results",)):
        done = _cli(env, "--log-level", "DEBUG", *args, "--connect-timeout", "4")
        assert done.returncode == ExitCode.USAGE, done.stderr[-2000:]
        last = done.stderr.strip().splitlines()[-1]
        assert "[kafka-refused]" in last and "SASL user and password" in last
        assert "Wrong-Password-77" not in done.stdout + done.stderr
        assert "KafkaAdminClient" in done.stderr or "KafkaConsumer" in done.stderr  # DEBUG ran


def test_a_wrong_password_stops_the_worker_with_exit_2(
    worker_env: WorkerEnv, kafka_sasl: SaslListener, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        **worker_env.env,
        **_sasl_env(kafka_sasl, MEMKD_KAFKA__SASL_PASSWORD="Wrong-Password-78"),
        "MEMKD_KAFKA__UNREACHABLE_TIMEOUT_S": "5",
        "MEMKD_METRICS__PORT": str(free_port()),
        "MEMKD_LOG__LEVEL": "DEBUG",
        "MEMKD_LOG__FORMAT": "json",
    }
    done = subprocess.run(
        [str(WORKER_BIN)], env=env, capture_output=True, text=True, timeout=180, cwd=REPO
    )
    assert done.returncode == ExitCode.USAGE, done.stderr[-3000:]
    ours = [json.loads(x) for x in done.stderr.splitlines() if '"logger": "memkd_stream' in x]
    errors = [e for e in ours if e["level"] == "error"]
    assert len(errors) == 1, errors  # one clear line saying what to check
    assert "accepts connections but our client could not log in" in errors[0]["event"]
    assert errors[0]["code"] == "kafka-refused"
    assert "Wrong-Password-78" not in done.stdout + done.stderr


def test_a_missing_ca_file_stops_the_worker_with_exit_2(
    worker_env: WorkerEnv, kafka_sasl: SaslListener
) -> None:
    env = {
        **os.environ,
        **worker_env.env,
        **_sasl_env(kafka_sasl, MEMKD_KAFKA__SSL_CAFILE="/nonexistent/ca.pem"),
    }
    done = subprocess.run(
        [str(WORKER_BIN)], env=env, capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert done.returncode == ExitCode.USAGE
    (line,) = done.stderr.strip().splitlines()
    assert "MEMKD_KAFKA__SSL_CAFILE" in line and "/nonexistent/ca.pem" in line

"""A private Kafka + Redis pair on free ports (``deploy/local/services.py --var``): the tests that
stop and start services never touch the shared ones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.worker_env import REPO, free_port

__all__ = ["PrivateServices"]

SERVICES = REPO / "deploy" / "local" / "services.py"


class PrivateServices:
    """``up()``/``down()`` both servers; ``stop_kafka()`` / ``kill_kafka()`` only the broker."""

    def __init__(self, var: Path) -> None:
        self.var = var
        self.kafka_port, self.controller_port, self.redis_port = (free_port() for _ in range(3))
        self.sasl_port = free_port()  # the broker's SASL_SSL listener, unused here

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def _run(self, command: str) -> None:
        done = subprocess.run(
            [
                sys.executable, str(SERVICES), command, "--var", str(self.var),
                "--kafka-port", str(self.kafka_port),
                "--controller-port", str(self.controller_port),
                "--sasl-port", str(self.sasl_port),
                "--redis-port", str(self.redis_port), "--timeout", "150",
            ],
            capture_output=True,
            text=True,
            timeout=200,
        )  # fmt: skip
        if done.returncode != 0:  # say why: the services' own report, not just an exit status
            raise RuntimeError(
                f"services.py {command} exited {done.returncode}:\n{done.stdout}{done.stderr}"
            )

    def up(self) -> None:
        """Start what is not running (after ``stop_kafka`` that is the broker alone)."""
        self._run("up")

    def down(self) -> None:
        self._run("down")

    def stop_kafka(self, timeout_s: float = 60) -> None:
        """Stop the broker only (SIGTERM, as a rolling restart does) and wait until it is gone."""
        pid = int((self.var / "run" / "kafka.pid").read_text())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)

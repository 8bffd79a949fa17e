"""No password reaches a log line at any level: the commands that build Kafka clients, at DEBUG.

kafka-python logs its whole configuration (SASL and SSL passwords included) at DEBUG. The broker
here is the PLAINTEXT one, so a SASL_SSL client fails after it has logged; what it printed until
then is what is checked (the SASL listener tests check a working login).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli_runner import CLI

SASL_PASSWORD = "e2e-Sasl-Pass-41"
KEY_PASSWORD = "e2e-Key-Pass-42"


@pytest.fixture
def sasl_env(ca_pem: Path) -> dict[str, str]:
    return {
        "MEMKD_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "MEMKD_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        "MEMKD_KAFKA__SASL_USERNAME": "memkd",
        "MEMKD_KAFKA__SASL_PASSWORD": SASL_PASSWORD,
        "MEMKD_KAFKA__SSL_CAFILE": str(ca_pem),
        "MEMKD_KAFKA__SSL_PASSWORD": KEY_PASSWORD,
    }


@pytest.mark.parametrize(
    "command",
    [
        ("topics", "create", "--connect-timeout", "3"),
        ("results", "--connect-timeout", "3"),
    ],
    ids=["topics-create", "results"],
)
def test_debug_logs_of_kafka_commands_hold_no_password(
    cli: CLI, sasl_env: dict[str, str], command: tuple[str, ...]
) -> None:
    done = cli.run("--log-level", "DEBUG", *command, env=sasl_env, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode in (1, 2), output
    assert "KafkaAdminClient" in output or "KafkaConsumer" in output  # the client did log
    assert SASL_PASSWORD not in output and KEY_PASSWORD not in output
    assert len(done.stderr.strip().splitlines()[-1]) < 400  # the error itself is one line


def test_a_missing_ca_file_is_one_line_and_exit_2(cli: CLI, sasl_env: dict[str, str]) -> None:
    env = {**sasl_env, "MEMKD_KAFKA__SSL_CAFILE": "/nowhere/ca.pem"}
    done = cli.run("topics", "create", env=env, timeout=60)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "MEMKD_KAFKA__SSL_CAFILE" in line and "/nowhere/ca.pem" in line

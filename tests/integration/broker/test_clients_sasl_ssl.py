"""The broker clients authenticate for real: SCRAM-SHA-512 over TLS on the local broker's SASL_SSL
listener, with clients built from ``KafkaSettings`` as a deployment builds them.

What a failure looks like is pinned because the worker maps it to an exit status: with
kafka-python 3.0 a wrong password ends, after the client's bootstrap budget, in
``KafkaTimeoutError("Unable to bootstrap from <host:port>")``, the same error as a broker that is
down (the cause is only in kafka-python's log: the broker closes the connection after the failed
SCRAM exchange). A missing CA file never gets that far: the settings refuse it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from kafka.errors import KafkaTimeoutError
from pydantic import SecretStr, ValidationError

from memkd_stream.broker.clients import make_producer, make_reader
from tests.support.round_trip import produce_and_read_back
from tests.support.sasl import SaslListener

pytestmark = pytest.mark.integration

# The client's bootstrap budget in these tests, and how long a refusal may take at most (a
# bound against hanging, not a measurement: the CPUs are shared).
BUDGET_S = 3.0
WITHIN_S = 30.0


def test_produce_and_read_back_through_sasl_ssl(kafka_sasl: SaslListener, unique_topic) -> None:
    topic = unique_topic()
    settings = kafka_sasl.settings()
    value = os.urandom(2 * 1024 * 1024)  # larger than one TLS record and one socket read
    record = produce_and_read_back(settings, topic, b"cam-1", value, [("h", b"v")])
    assert (record.key, record.value, list(record.headers)) == (b"cam-1", value, [("h", b"v")])


@pytest.mark.parametrize("client", ["producer", "reader"])
def test_refused_login_is_a_bootstrap_timeout_within_the_budget(
    kafka_sasl: SaslListener, client: str
) -> None:
    """Why ``broker.errors.connect_failure`` asks TCP whether the broker is there at all."""
    settings = kafka_sasl.settings(
        unreachable_timeout_s=BUDGET_S, sasl_password=SecretStr("not-the-password")
    )
    started = time.monotonic()
    with pytest.raises(KafkaTimeoutError) as err:
        if client == "producer":
            make_producer(settings)  # bootstraps within unreachable_timeout_s
        else:
            make_reader(settings, timeout_s=BUDGET_S)
    assert str(err.value) == f"KafkaTimeoutError: Unable to bootstrap from {kafka_sasl.bootstrap}"
    assert time.monotonic() - started < WITHIN_S


def test_a_missing_ca_file_is_refused_by_the_settings_before_any_connect(
    kafka_sasl: SaslListener,
) -> None:
    with pytest.raises(ValidationError, match="ssl_cafile"):
        kafka_sasl.settings(ssl_cafile=Path("/nonexistent/memkd-ca.pem"))

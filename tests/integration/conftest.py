"""Fixtures for tests that talk to the real Kafka broker and Redis server of ``make services-up``.

Where they are comes from the same settings the service reads (``MEMKD_KAFKA__BOOTSTRAP_SERVERS``,
``MEMKD_REDIS__URL``; ``make test`` sets both). The broker's SASL_SSL listener (``kafka_sasl``) is
found through ``MEMKD_TEST_KAFKA_SASL`` (host:port, default 127.0.0.1:39094) and
``MEMKD_TEST_KAFKA_CA`` (default: this checkout's var/kafka/tls/ca.pem), which ``make test`` sets
from its port variables; its user and password are the development constants of
deploy/local/services.py unless ``MEMKD_TEST_KAFKA_SASL_USER`` / ``_PASSWORD`` say otherwise.
Nothing is skipped: if a service does not answer, every test that needs it fails with a message
saying to run ``make services-up``.

Several test runs (and helpers) share one broker and one Redis, so nothing here is global:
topics get unique names and are deleted afterwards, Redis keys live under a per-test prefix and
only those keys are deleted. Never FLUSHDB.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from deploy.local import services as local_services
from memkd_stream.broker.clients import make_admin
from memkd_stream.settings import Settings, load_settings
from tests.support.sasl import SaslListener

TopicFactory = Callable[..., str]

_HINT = "start them with `make services-up` (or run the whole suite with `make test`)"


def _fail(what: str, where: str, exc: BaseException) -> None:
    pytest.fail(
        f"{what} does not answer at {where}: {type(exc).__name__}: {exc}. {_HINT}", pytrace=False
    )


@pytest.fixture(scope="session")
def service_settings() -> Settings:
    """The settings the tests' clients use (env of ``make test``, else the defaults)."""
    return load_settings()


@pytest.fixture(scope="session")
def kafka_bootstrap(service_settings: Settings) -> str:
    """``host:port`` of the broker, after one real metadata round trip."""
    bootstrap = service_settings.kafka.bootstrap_servers
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=5000, bootstrap_timeout_ms=5000
        )
        try:
            admin.list_topics()
        finally:
            admin.close()
    except Exception as exc:
        _fail("Kafka", bootstrap, exc)
    return bootstrap


@pytest.fixture(scope="session")
def kafka_sasl(repo_root: Path) -> SaslListener:
    """The SASL_SSL listener, after one authenticated metadata round trip through
    ``memkd_stream.broker.clients``."""
    env = os.environ
    cafile = Path(env.get("MEMKD_TEST_KAFKA_CA") or repo_root / "var/kafka/tls/ca.pem")
    listener = SaslListener(
        bootstrap=env.get("MEMKD_TEST_KAFKA_SASL") or "127.0.0.1:39094",
        cafile=cafile if cafile.is_absolute() else repo_root / cafile,
        username=env.get("MEMKD_TEST_KAFKA_SASL_USER") or local_services.SASL_USER,
        password=env.get("MEMKD_TEST_KAFKA_SASL_PASSWORD") or local_services.SASL_PASSWORD,
    )
    where = (
        f"{listener.bootstrap} (SASL_SSL, {listener.mechanism} user {listener.username}, "
        f"CA {listener.cafile}; MEMKD_TEST_KAFKA_SASL / MEMKD_TEST_KAFKA_CA)"
    )
    if not listener.cafile.is_file():
        pytest.fail(
            f"Kafka's SASL_SSL listener: the CA file {listener.cafile} does not exist "
            "(MEMKD_TEST_KAFKA_CA); `make services-up` generates it in var/kafka/tls/",
            pytrace=False,
        )
    try:
        admin = make_admin(listener.settings(), client_id="memkd-tests", timeout_s=10)
        try:
            admin.list_topics()
        finally:
            admin.close()
    except Exception as exc:
        _fail("Kafka's SASL_SSL listener", where, exc)
    return listener


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> Iterator[KafkaAdminClient]:
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="memkd-tests")
    yield admin
    admin.close()


@pytest.fixture
def unique_topic(
    kafka_admin: KafkaAdminClient, request: pytest.FixtureRequest
) -> Iterator[TopicFactory]:
    """Factory: ``unique_topic(partitions=1, prefix=None, config=None) -> name``.

    Creates a topic no other test uses (``test.<test name>.<random>``), waits until every partition
    has a leader, and deletes the topics it made when the test ends.
    """
    made: list[str] = []
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]

    def make(
        partitions: int = 1, prefix: str | None = None, config: dict[str, str] | None = None
    ) -> str:
        name = f"test.{prefix or base}.{uuid.uuid4().hex[:10]}"
        kafka_admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=partitions,
                    replication_factor=1,
                    topic_configs=config or {},
                )
            ]
        )
        made.append(name)
        _wait_for_leaders(kafka_admin, name, partitions)
        return name

    yield make
    if made:
        with contextlib.suppress(Exception):
            kafka_admin.delete_topics(made)


def _wait_for_leaders(
    admin: KafkaAdminClient, topic: str, partitions: int, timeout_s: float = 15
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(Exception):
            (described,) = admin.describe_topics([topic])
            parts = described.get("partitions") or []
            leaders = [p.get("leader_id", p.get("leader", -1)) for p in parts]
            if len(leaders) == partitions and all(leader >= 0 for leader in leaders):
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic}: partitions without a leader after {timeout_s}s")
        time.sleep(0.1)


@pytest.fixture(scope="session")
def redis_url(service_settings: Settings) -> str:
    """The Redis URL, after a PING."""
    url = service_settings.redis.url
    client = service_settings.redis.client()
    try:
        client.ping()
    except Exception as exc:
        _fail("Redis", url, exc)
    finally:
        client.close()
    return url


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of this test alone (``test:<random>:``); use it for every key and channel."""
    return f"test:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def redis_client(
    redis_url: str, service_settings: Settings, redis_prefix: str
) -> Iterator[redis.Redis]:
    """A binary (bytes in, bytes out) client; the test's ``redis_prefix`` keys are deleted after."""
    client = service_settings.redis.client()
    yield client
    with contextlib.suppress(Exception):
        keys = list(client.scan_iter(match=redis_prefix + "*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    client.close()

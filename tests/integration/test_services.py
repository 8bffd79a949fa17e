"""The local Kafka broker and Redis server are real and configured for camera images.

Round trips with the same client libraries the service uses (kafka-python, redis-py): large binary
values with headers, Redis bytes and pub/sub, what a client sees when nothing listens, and the
life cycle of ``deploy/local/services.py`` itself (a crashed broker must not break the next start;
the SASL_SSL listener, its TLS material and its user come back with it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import UserScramCredentialDeletion
from kafka.errors import KafkaTimeoutError

from deploy.local import services as local_services
from memkd_stream.broker.clients import make_admin
from memkd_stream.settings import KafkaSettings
from tests.support.sasl import SaslListener

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _producer(bootstrap: str, **overrides) -> KafkaProducer:
    config = dict(
        bootstrap_servers=bootstrap,
        acks="all",
        max_request_size=18 * MiB,
        linger_ms=0,
    )
    config.update(overrides)
    return KafkaProducer(**config)


def _read_one(bootstrap: str, topic: str, timeout_s: float = 30.0):
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=18 * MiB,
        fetch_max_bytes=18 * MiB,
    )
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                if records:
                    return records[0]
        raise AssertionError(f"nothing read back from {topic} in {timeout_s}s")
    finally:
        consumer.close()


@pytest.mark.parametrize("size", [5 * MiB, 16 * MiB], ids=["5MiB", "16MiB"])
def test_large_binary_value_with_headers_round_trips_byte_identical(
    kafka_bootstrap: str, unique_topic, size: int
) -> None:
    topic = unique_topic()
    value = os.urandom(size)
    headers = [("memkd-id", b"cam-7/000042"), ("station", b"\x00\xff\x80binary"), ("empty", b"")]
    producer = _producer(kafka_bootstrap)
    try:
        meta = producer.send(topic, key=b"press-3", value=value, headers=headers).get(timeout=60)
    finally:
        producer.close()
    assert (meta.topic, meta.partition, meta.offset) == (topic, 0, 0)

    record = _read_one(kafka_bootstrap, topic)
    assert record.key == b"press-3"
    assert record.value == value
    assert list(record.headers) == headers


def test_broker_refuses_unknown_topics_instead_of_creating_them(kafka_bootstrap: str) -> None:
    producer = _producer(kafka_bootstrap, max_block_ms=3000)
    try:
        with pytest.raises(KafkaTimeoutError):
            producer.send("test.never-created.topic", value=b"x").get(timeout=10)
    finally:
        producer.close(timeout=1)


def test_redis_binary_set_get(redis_client: redis.Redis, redis_prefix: str) -> None:
    value = os.urandom(3 * MiB)
    assert redis_client.set(f"{redis_prefix}blob", value)
    assert redis_client.get(f"{redis_prefix}blob") == value


def test_redis_pubsub_round_trip(redis_client: redis.Redis, redis_prefix: str) -> None:
    channel = f"{redis_prefix}events"
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(channel)
        assert pubsub.get_message(timeout=5) is None  # consumes the subscribe confirmation
        assert redis_client.publish(channel, b'{"line": "A", "version": 2}') == 1
        deadline = time.monotonic() + 5
        message = None
        while message is None and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1)
        assert message is not None, "published message never arrived"
        assert message["channel"] == channel.encode()
        assert message["data"] == b'{"line": "A", "version": 2}'
    finally:
        pubsub.close()


def test_absent_broker_is_a_clear_error_within_a_bounded_time() -> None:
    """Nothing listens on the port: kafka-python says so within its bootstrap timeout."""
    port = _free_port()
    started = time.monotonic()
    with pytest.raises(KafkaTimeoutError, match=f"Unable to bootstrap from 127.0.0.1:{port}"):
        KafkaProducer(bootstrap_servers=f"127.0.0.1:{port}", bootstrap_timeout_ms=3000)
    assert time.monotonic() - started < 15


def test_absent_redis_is_a_clear_error_within_a_bounded_time() -> None:
    client = redis.Redis(host="127.0.0.1", port=_free_port(), socket_connect_timeout=2)
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError, match=r"[Cc]onnect"):
        client.ping()
    assert time.monotonic() - started < 10


# --- deploy/local/services.py on its own ports and folder (never the shared services) ---------


def _services(
    repo_root: Path, var: Path, ports: dict[str, int], command: str, expect_rc: int = 0
) -> str:
    done = subprocess.run(
        [
            sys.executable,
            str(repo_root / "deploy/local/services.py"),
            command,
            "--var",
            str(var),
            "--kafka-port",
            str(ports["kafka"]),
            "--controller-port",
            str(ports["controller"]),
            "--sasl-port",
            str(ports["sasl"]),
            "--redis-port",
            str(ports["redis"]),
            "--timeout",
            "90",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == expect_rc, f"services.py {command}: rc {done.returncode}\n{output}"
    return output


def _pid(var: Path, name: str) -> int:
    return int((var / "run" / f"{name}.pid").read_text())


def _sasl_round_trip(var: Path, ports: dict[str, int]) -> None:
    """A metadata request on the SASL_SSL listener as the development user, with this var's CA."""
    listener = SaslListener(
        bootstrap=f"127.0.0.1:{ports['sasl']}",
        cafile=var / "kafka" / "tls" / "ca.pem",
        username=local_services.SASL_USER,
        password=local_services.SASL_PASSWORD,
    )
    admin = make_admin(listener.settings(), timeout_s=15)
    try:
        admin.list_topics()
    finally:
        admin.close()


def _gone(pid: int, timeout_s: float = 15) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_services_survive_a_crashed_broker_and_stop_only_their_own(
    repo_root: Path, tmp_path: Path
) -> None:
    var = tmp_path / "var"
    tls = var / "kafka" / "tls"
    ports = {name: _free_port() for name in ("kafka", "controller", "sasl", "redis")}
    try:
        out = _services(repo_root, var, ports, "up")
        assert "generated a CA" in out and f"127.0.0.1:{ports['sasl']} (SASL_SSL" in out
        kafka_pid, redis_pid = _pid(var, "kafka"), _pid(var, "redis")
        ca = (tls / "ca.pem").read_bytes()
        assert "already up" in _services(repo_root, var, ports, "up")  # idempotent
        assert (tls / "ca.pem").read_bytes() == ca  # TLS material is made once
        status = _services(repo_root, var, ports, "status")
        assert f"127.0.0.1:{ports['sasl']} (SASL_SSL, SCRAM-SHA-512 user memkd" in status
        assert status.count(" answers;") == 3, status  # PLAINTEXT, SASL_SSL, Redis
        _sasl_round_trip(var, ports)

        # A data dir without the SCRAM user (formatted before the SASL listener existed): the next
        # `up` creates it over PLAINTEXT instead of waiting for a login that cannot succeed.
        plaintext = KafkaSettings(bootstrap_servers=f"127.0.0.1:{ports['kafka']}")
        admin = make_admin(plaintext, client_id="memkd-tests", timeout_s=15)
        try:
            admin.alter_user_scram_credentials(
                [UserScramCredentialDeletion(local_services.SASL_USER, "SCRAM-SHA-512")]
            )
        finally:
            admin.close()
        assert "DOWN" in _services(repo_root, var, ports, "status", expect_rc=1)
        assert "created the SCRAM user" in _services(repo_root, var, ports, "up")
        _sasl_round_trip(var, ports)

        # A crash: the broker dies hard and leaves its pid file behind; its TLS material is gone
        # too and is made anew.
        os.kill(kafka_pid, signal.SIGKILL)
        assert _gone(kafka_pid)
        shutil.rmtree(tls)
        out = _services(repo_root, var, ports, "up")
        assert "stale pid file" in out and "generated a CA" in out
        assert _pid(var, "kafka") != kafka_pid
        kafka_pid = _pid(var, "kafka")
        _sasl_round_trip(var, ports)  # with the new CA

        # A crash that also lost the pid file: our live broker is adopted, not duplicated.
        (var / "run" / "kafka.pid").unlink()
        assert "adopting" in _services(repo_root, var, ports, "up")
        assert _pid(var, "kafka") == kafka_pid

        (var / "run" / "redis.pid").unlink()
        assert "redis: adopting" in _services(repo_root, var, ports, "up")
        assert _pid(var, "redis") == redis_pid

        # The same checkout asked for other ports while running: a clear no, not a second broker.
        for name in ("redis", "sasl"):
            moved = {**ports, name: _free_port()}
            out = _services(repo_root, var, moved, "up", expect_rc=1)
            assert "not on the ports asked for" in out and "services-down" in out

        producer = _producer(f"127.0.0.1:{ports['kafka']}", max_block_ms=5000)
        producer.close()  # the broker answers after all that

        _services(repo_root, var, ports, "down")
        assert _gone(kafka_pid) and _gone(redis_pid)
        assert not (var / "run" / "kafka.pid").exists()
        assert "not running" in _services(repo_root, var, ports, "down")
    finally:
        with contextlib.suppress(Exception):
            _services(repo_root, var, ports, "down")

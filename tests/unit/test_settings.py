"""Settings: defaults, environment, TOML file, precedence, one-line errors, secrets kept secret."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import get_args

import pytest
import redis
import structlog
from pydantic import ValidationError

from memkd_stream.errors import MemkdStreamError
from memkd_stream.log import configure_logging, get_logger
from memkd_stream.settings import (
    LogSettings,
    ModelSettings,
    RedisSettings,
    Settings,
    SettingsError,
    env_name,
    load_settings,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """`make test` points MEMKD_* at the local services; these tests start from nothing."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("MEMKD_"):
            monkeypatch.delenv(name)


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "memkd.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_local_services_and_the_documented_values() -> None:
    s = load_settings()
    assert s.kafka.bootstrap_servers == "127.0.0.1:39092"
    assert (s.kafka.inspect_topic, s.kafka.results_topic, s.kafka.dlq_topic) == (
        "memkd.inspect",
        "memkd.results",
        "memkd.inspect.dlq",
    )
    assert s.kafka.max_message_bytes == 16 * 1024 * 1024
    assert s.redis.url == "redis://127.0.0.1:36379/0"
    assert s.redis.chunk_bytes == 8 * 1024 * 1024
    assert s.model.backbone == "tf_efficientnet_lite2"
    assert s.worker.max_batch == 16 and s.worker.preload_lines == []
    assert s.worker.worker_id  # the hostname
    assert (s.metrics.port, s.log.level, s.log.format) == (9400, "INFO", "auto")


def test_environment_sets_nested_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMKD_KAFKA__BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("MEMKD_WORKER__MAX_BATCH", "32")
    monkeypatch.setenv("MEMKD_WORKER__PRELOAD_LINES", "A, press-3")
    monkeypatch.setenv("MEMKD_LOG__LEVEL", "debug")
    s = load_settings()
    assert s.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert s.worker.max_batch == 32
    assert s.worker.preload_lines == ["A", "press-3"]
    assert s.log.level == "DEBUG"


def test_preload_lines_accepts_a_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMKD_WORKER__PRELOAD_LINES", '["A", "B"]')
    assert load_settings().worker.preload_lines == ["A", "B"]


def test_precision_is_a_model_setting_with_the_libraries_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from memkd.precision import Precision

    from memkd_stream.cli.inputs import PRECISIONS

    assert load_settings().model.precision == "auto"
    monkeypatch.setenv("MEMKD_MODEL__PRECISION", "bf16")
    assert load_settings().model.precision == "bf16"
    monkeypatch.setenv("MEMKD_MODEL__PRECISION", "half")
    with pytest.raises(SettingsError, match=r"^MEMKD_MODEL__PRECISION: .*'fp16'.*got 'half'$"):
        load_settings()
    names = get_args(ModelSettings.model_fields["precision"].annotation)
    assert list(names) == list(PRECISIONS) == [p.value for p in Precision]


def test_empty_environment_values_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Kubernetes Secret keeps every key; the unused ones are empty strings."""
    monkeypatch.setenv("MEMKD_KAFKA__SASL_PASSWORD", "")
    monkeypatch.setenv("MEMKD_KAFKA__SSL_CAFILE", "")
    s = load_settings()
    assert s.kafka.sasl_password is None and s.kafka.ssl_cafile is None


def test_toml_file_and_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_toml(
        tmp_path,
        """
[kafka]
partitions = 12
inspect_topic = "plant1.inspect"

[worker]
max_batch = 4
decode_threads = 3
preload_lines = ["A"]
""",
    )
    monkeypatch.setenv("MEMKD_WORKER__MAX_BATCH", "8")
    s = load_settings(config)
    assert s.kafka.partitions == 12 and s.kafka.inspect_topic == "plant1.inspect"
    assert s.worker.max_batch == 8  # env beats the file
    assert s.worker.decode_threads == 3  # the rest of the file's [worker] table still applies
    assert s.worker.preload_lines == ["A"]


def test_invalid_value_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMKD_WORKER__MAX_BATCH", "abc")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("MEMKD_WORKER__MAX_BATCH: Input should be a valid integer")
    assert message.endswith("got 'abc'")
    assert caught.value.code == "settings-invalid"
    assert isinstance(caught.value, MemkdStreamError)


def test_every_problem_is_named_on_the_same_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMKD_METRICS__PORT", "99999")
    monkeypatch.setenv("MEMKD_KAFKA__SECURITY_PROTOCOL", "TLS")
    monkeypatch.setenv("MEMKD_MODEL__DEVICE", "gpu")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    for name in ("MEMKD_METRICS__PORT", "MEMKD_KAFKA__SECURITY_PROTOCOL", "MEMKD_MODEL__DEVICE"):
        assert name in message


def test_typo_in_a_nested_name_is_an_error_not_silence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMKD_WORKER__MAX_BACTH", "8")
    with pytest.raises(SettingsError, match="MEMKD_WORKER__MAX_BACTH: Extra inputs"):
        load_settings()


def test_invalid_value_in_the_file_names_both_spellings(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "[worker]\nmax_batch = 0\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(config)
    assert str(caught.value).startswith(
        f"MEMKD_WORKER__MAX_BATCH (or worker.max_batch in {config}): Input should be greater"
    )


def test_missing_or_broken_file_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="no such file"):
        load_settings(tmp_path / "absent.toml")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(write_toml(tmp_path, "[worker\nmax_batch = 1"))


def test_incomplete_sasl_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMKD_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(SettingsError, match=r"MEMKD_KAFKA: .*sasl_mechanism is required"):
        load_settings()


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(ValidationError):
        s.worker.max_batch = 3  # type: ignore[misc]
    assert s.log.model_copy(update={"level": "DEBUG"}).level == "DEBUG"


def test_env_name_maps_field_locations() -> None:
    assert env_name(("kafka", "bootstrap_servers")) == "MEMKD_KAFKA__BOOTSTRAP_SERVERS"
    assert env_name(("worker", "preload_lines", 0)) == "MEMKD_WORKER__PRELOAD_LINES"


# --- secrets ---------------------------------------------------------------------------------

SECRETS = ("kafka-pass-123", "ssl-key-pass-456", "redis-pass-789", "url-pass-000")


@pytest.fixture
def ca_file(ca_pem: Path) -> Path:
    return ca_pem


@pytest.fixture
def secret_settings(monkeypatch: pytest.MonkeyPatch, ca_file: Path) -> Settings:
    monkeypatch.setenv("MEMKD_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("MEMKD_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("MEMKD_KAFKA__SASL_USERNAME", "worker")
    monkeypatch.setenv("MEMKD_KAFKA__SASL_PASSWORD", SECRETS[0])
    monkeypatch.setenv("MEMKD_KAFKA__SSL_CAFILE", str(ca_file))
    monkeypatch.setenv("MEMKD_KAFKA__SSL_PASSWORD", SECRETS[1])
    monkeypatch.setenv("MEMKD_REDIS__USERNAME", "memkd")
    monkeypatch.setenv("MEMKD_REDIS__PASSWORD", SECRETS[2])
    monkeypatch.setenv("MEMKD_REDIS__URL", f"redis://memkd:{SECRETS[3]}@redis.svc:6379/0")
    return load_settings()


def test_secrets_are_not_in_repr_or_str(secret_settings: Settings) -> None:
    for text in (repr(secret_settings), str(secret_settings), repr(secret_settings.redis)):
        for secret in SECRETS:
            assert secret not in text
    assert "redis://memkd:***@redis.svc:6379/0" in repr(secret_settings.redis)


@pytest.fixture
def restore_logging():
    """configure_logging changes process-wide state; put it back for the tests that follow."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def test_secrets_are_not_logged(secret_settings: Settings, restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging(LogSettings(format="json"), stream=stream)
    log = get_logger("test.settings")
    log.info("settings loaded", settings=secret_settings, url=secret_settings.redis.url)
    log.info("login", password=SECRETS[0], sasl_password=secret_settings.kafka.sasl_password)
    text = stream.getvalue()
    for secret in SECRETS:
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["event"] for line in lines] == ["settings loaded", "login"]


def test_invalid_secret_value_is_not_echoed(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "[redis]\npassword = 987654321\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(config)
    assert str(caught.value).startswith("MEMKD_REDIS__PASSWORD (or redis.password in")
    assert "987654321" not in str(caught.value)


def test_kafka_client_kwargs_carry_the_security_settings(
    secret_settings: Settings, ca_file: Path
) -> None:
    kwargs = secret_settings.kafka.client_kwargs()
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] == "worker"
    assert kwargs["sasl_plain_password"] == SECRETS[0]
    assert kwargs["ssl_cafile"] == str(ca_file)
    assert kwargs["ssl_password"] == SECRETS[1]


def test_plaintext_client_kwargs_have_no_security_extras() -> None:
    kwargs = load_settings().kafka.client_kwargs()
    assert kwargs == {
        "bootstrap_servers": "127.0.0.1:39092",
        "client_id": "memkd",
        "request_timeout_ms": 30000,
        "security_protocol": "PLAINTEXT",
    }


def test_redis_client_uses_tls_acl_and_timeouts() -> None:
    settings = RedisSettings(
        url="redis://cache:6380/2",
        username="memkd",
        password="pw",  # type: ignore[arg-type]
        tls=True,
        ssl_ca_certs=Path("/etc/ca.crt"),
        socket_timeout_s=2.5,
    )
    client = settings.client()
    pool = client.connection_pool
    assert pool.connection_class is redis.SSLConnection
    kw = pool.connection_kwargs
    assert (kw["host"], kw["port"], kw["db"]) == ("cache", 6380, 2)
    assert (kw["username"], kw["password"]) == ("memkd", "pw")
    assert kw["ssl_ca_certs"] == "/etc/ca.crt"
    assert kw["socket_timeout"] == 2.5
    client.close()


def test_a_missing_ca_file_is_a_settings_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMKD_KAFKA__SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("MEMKD_KAFKA__SSL_CAFILE", "/nowhere/ca.pem")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value).startswith("MEMKD_KAFKA__SSL_CAFILE: ")
    assert "/nowhere/ca.pem does not exist" in str(caught.value)


def test_a_ca_file_that_is_not_pem_is_a_settings_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    monkeypatch.setenv("MEMKD_KAFKA__SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("MEMKD_KAFKA__SSL_CAFILE", str(tmp_path / "ca.pem"))
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "is not a readable PEM CA file" in str(caught.value)


def test_redis_retries_fit_the_unreachable_budget() -> None:
    """Each attempt may take a socket timeout and a backoff of at most 2 s."""
    assert RedisSettings(socket_timeout_s=5, unreachable_timeout_s=30).retry()._retries == 4
    assert RedisSettings(socket_timeout_s=1, unreachable_timeout_s=3).retry()._retries == 1
    assert RedisSettings(socket_timeout_s=5, unreachable_timeout_s=1).retry()._retries == 0


def test_the_default_teacher_is_memkds() -> None:
    """``model.backbone`` (what ``fit`` and the worker use) is the library's default teacher."""
    from memkd.config import ModelConfig

    assert load_settings().model.backbone == ModelConfig().backbone

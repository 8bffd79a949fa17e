"""Logs: JSON lines off a terminal, and no secret in any field (DESIGN.md §6)."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from memkd_stream.log import configure_logging, get_logger, redact_secrets, redact_url
from memkd_stream.settings import LogSettings


@pytest.fixture(autouse=True)
def restore_logging():
    """configure_logging changes process-wide state; put it back for the tests that follow."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def test_url_credentials_are_masked_wherever_they_stand() -> None:
    text = "connect redis://memkd:s3cret@redis:6379/0 then kafka://u:p@b:9092"
    assert redact_url(text) == "connect redis://memkd:***@redis:6379/0 then kafka://u:***@b:9092"
    assert redact_url("redis://redis:6379/0") == "redis://redis:6379/0"


def test_secret_named_fields_are_masked() -> None:
    event = {"sasl_password": "x", "api_key": "y", "token": None, "line": "A"}
    assert redact_secrets(None, "info", event) == {
        "sasl_password": "**********",
        "api_key": "**********",
        "token": None,
        "line": "A",
    }


def test_json_lines_carry_the_fields_and_library_loggers_share_the_format() -> None:
    stream = io.StringIO()
    configure_logging(LogSettings(format="json", level="INFO"), stream=stream)
    get_logger("test").info("scored", line="A", offset=7)
    logging.getLogger("redis.test").warning("from a library")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (first["event"], first["line"], first["offset"], first["level"]) == (
        "scored",
        "A",
        7,
        "info",
    )
    assert second["event"] == "from a library" and second["level"] == "warning"


def test_a_library_dumping_its_configuration_at_debug_leaks_no_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kafka-python logs its whole config (SASL and SSL passwords included) at DEBUG."""
    for name in list(__import__("os").environ):
        if name.startswith("MEMKD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MEMKD_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("MEMKD_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("MEMKD_KAFKA__SASL_USERNAME", "worker")
    monkeypatch.setenv("MEMKD_KAFKA__SASL_PASSWORD", "sasl-Secret-1")
    monkeypatch.setenv("MEMKD_KAFKA__SSL_PASSWORD", "key-Secret-2")
    monkeypatch.setenv("MEMKD_REDIS__URL", "redis://memkd:url-Secret-3@redis:6379/0")
    from memkd_stream.settings import load_settings

    settings = load_settings()
    stream = io.StringIO()
    configure_logging(LogSettings(format="console", level="DEBUG"), stream=stream)
    library = logging.getLogger("kafka.admin.client")
    library.debug(
        "Starting KafkaAdminClient with configuration: %s", settings.kafka.client_kwargs()
    )
    try:
        raise ConnectionError("auth failed for sasl-Secret-1 at redis://memkd:url-Secret-3@r")
    except ConnectionError:
        get_logger("test").exception("connect failed")
    text = stream.getvalue()
    assert "Starting KafkaAdminClient" in text and "Traceback" in text
    for secret in ("sasl-Secret-1", "key-Secret-2", "url-Secret-3"):
        assert secret not in text

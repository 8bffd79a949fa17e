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

"""Fixtures for running the installed ``memkd-stream`` as a user does (subprocess, env settings).

Commands talk to the Redis of ``make services-up`` (``MEMKD_REDIS__URL``), under a key prefix of
this module's own, whose keys are deleted afterwards (other runs share that Redis).
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from memkd_stream.settings import load_settings
from tests.support.cli_runner import CLI


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CLI]:
    executable = Path(sys.executable).with_name("memkd-stream")
    assert executable.is_file(), f"{executable} is not installed; run `make setup`"
    settings = load_settings()
    client = settings.redis.client()
    try:
        client.ping()
    except Exception as exc:
        pytest.fail(f"Redis does not answer at {settings.redis.url}: {exc}; run `make services-up`")
    prefix = f"test:e2e-{uuid.uuid4().hex[:10]}:"
    env = {
        **os.environ,
        "MEMKD_REDIS__URL": settings.redis.url,
        "MEMKD_REDIS__KEY_PREFIX": prefix,
        "MEMKD_MODEL__DEVICE": "cpu",
        "MEMKD_LOG__LEVEL": "WARNING",
        "COLUMNS": "200",
    }
    yield CLI(executable, env, tmp_path_factory.mktemp("e2e"))
    with contextlib.suppress(Exception):
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    client.close()

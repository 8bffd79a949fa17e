"""Pure parts of ``deploy/local/services.py`` (the running services are in tests/integration)."""

from __future__ import annotations

import uuid

import pytest

from deploy.local import services


def test_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """kafka-storage reads "--cluster-id -x..." as an option: one fresh start in 64 failed."""
    draws = iter([uuid.UUID(bytes=b"\xfb" + bytes(15)), uuid.UUID(bytes=bytes(16))])
    monkeypatch.setattr(services.uuid, "uuid4", lambda: next(draws))
    cluster_id = services._cluster_id()
    assert cluster_id == "AAAAAAAAAAAAAAAAAAAAAA"  # the second draw; the first began with "-"


def test_cluster_id_is_a_kafka_uuid() -> None:
    cluster_id = services._cluster_id()
    assert len(cluster_id) == 22 and not cluster_id.startswith("-")

"""Fixtures for the deploy checks (the checks themselves live in deploy_checks.py)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.unit.deploy.deploy_checks import K8S_DIR, Manifest, load_templates, render_k8s_dir


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The checks must run offline: any socket connection is a test failure."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"deploy tests must not use the network: connect{args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield


@pytest.fixture(scope="session")
def rendered() -> list[Manifest]:
    return render_k8s_dir(K8S_DIR)


@pytest.fixture(scope="session")
def find() -> Callable[[str, str | None], dict[str, Any]]:
    """find(kind, name=None) -> the one rendered or template manifest of that kind (and name)."""
    everything = [*render_k8s_dir(K8S_DIR), *load_templates(K8S_DIR)]

    def _find(kind: str, name: str | None = None) -> dict[str, Any]:
        hits = [
            m.doc
            for m in everything
            if m.doc["kind"] == kind and (name is None or m.doc["metadata"].get("name") == name)
        ]
        assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
        return hits[0]

    return _find


@pytest.fixture(scope="session")
def config_data(find: Callable[..., dict[str, Any]]) -> dict[str, str]:
    return find("ConfigMap", "memkd-config")["data"]

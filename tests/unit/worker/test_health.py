"""The /metrics, /healthz and /readyz endpoints (DESIGN.md §6)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from memkd_stream.worker.health import HealthServer, Heartbeats
from memkd_stream.worker.metrics import WorkerMetrics


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server():
    clock = _Clock()
    beats = Heartbeats(clock=clock)
    beats.register("consumer", 30.0)
    state = {"teachers_loaded": True, "broker_reachable": True}
    metrics = WorkerMetrics()
    srv = HealthServer("127.0.0.1", 0, metrics.registry, beats, lambda: dict(state)).start()
    yield srv, clock, beats, state, metrics
    srv.stop()


def test_metrics_endpoint_serves_the_registry(server) -> None:
    srv, _clock, _beats, _state, metrics = server
    metrics.record_in(5)
    status, body = _get(srv.port, "/metrics")
    assert status == 200
    assert "memkd_records_in_total 5.0" in body


def test_healthz_fails_when_a_loop_is_stuck(server) -> None:
    srv, clock, beats, _state, _m = server
    assert _get(srv.port, "/healthz")[0] == 200
    clock.now += 31
    status, body = _get(srv.port, "/healthz")
    assert status == 503
    assert "consumer" in json.loads(body)["stale_loops_s"]
    beats.beat("consumer")
    assert _get(srv.port, "/healthz")[0] == 200


def test_readyz_is_teachers_and_broker_not_partitions(server) -> None:
    srv, _clock, _beats, state, _m = server
    status, body = _get(srv.port, "/readyz")
    assert status == 200 and json.loads(body)["status"] == "ready"  # no partitions needed
    state["broker_reachable"] = False
    status, body = _get(srv.port, "/readyz")
    assert status == 503
    assert json.loads(body)["checks"]["broker_reachable"] is False
    state["broker_reachable"] = True
    state["teachers_loaded"] = False
    assert _get(srv.port, "/readyz")[0] == 503


def test_unknown_path_is_404(server) -> None:
    srv, *_ = server
    assert _get(srv.port, "/nope")[0] == 404

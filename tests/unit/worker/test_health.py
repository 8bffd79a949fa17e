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
    state: dict = {"teachers_loaded": True, "broker_reachable": True, "fatal": None}
    metrics = WorkerMetrics()
    srv = HealthServer(
        "127.0.0.1",
        0,
        metrics.registry,
        beats,
        lambda: {k: v for k, v in state.items() if k != "fatal"},
        stopping=lambda: state["fatal"],
    ).start()
    srv.started()
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
    assert "consumer" in json.loads(body)["stale_s"]
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


def test_start_up_is_not_live_yet_and_a_stalled_one_says_stuck() -> None:
    clock = _Clock()
    beats = Heartbeats(clock=clock)
    beats.register("startup", 60.0)
    srv = HealthServer("127.0.0.1", 0, WorkerMetrics().registry, beats, dict).start()
    try:
        status, body = _get(srv.port, "/healthz")
        assert status == 503 and json.loads(body)["status"] == "starting"
        clock.now += 61  # a preload that stopped making progress
        assert json.loads(_get(srv.port, "/healthz")[1])["status"] == "stuck"
        beats.beat("startup")
        srv.started()
        assert _get(srv.port, "/healthz")[0] == 200
    finally:
        srv.stop()


def test_a_fatal_run_is_neither_ready_nor_live(server) -> None:
    srv, _clock, _beats, state, _m = server
    state["fatal"] = "device fault: CUDA error"
    for path in ("/readyz", "/healthz"):
        status, body = _get(srv.port, path)
        assert status == 503 and json.loads(body)["status"] == "stopping", path


def test_work_running_past_its_limit_is_stuck(server) -> None:
    """A pool thread has no loop to beat in: a decode that hangs is reported by its age."""
    srv, clock, beats, _state, _m = server
    with beats.working("decode", 10.0):
        assert _get(srv.port, "/healthz")[0] == 200
        clock.now += 11
        beats.beat("consumer")
        status, body = _get(srv.port, "/healthz")
        assert status == 503 and "decode" in json.loads(body)["stale_s"]
    assert _get(srv.port, "/healthz")[0] == 200  # finished: no longer stuck

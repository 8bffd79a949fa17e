"""WorkerMetrics samples and the /metrics, /healthz, /readyz endpoints (DESIGN.md §6)."""

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


def test_metrics_hooks_record_samples() -> None:
    m = WorkerMetrics()
    m.record_in(3)
    m.scored("A", 7, 0.4, anomalous=True)
    m.scored("A", 7, 0.1, anomalous=False)
    m.result_acked("A", 0.05)
    m.dead_lettered("decode-error")
    m.batch(4, 0.2)
    m.cache_hit("A")
    m.cache_miss("A")
    m.swap("A", 8)
    m.swap_failed("A")
    m.lag("t", 0, 12)
    m.stage("decode", 0.01)
    val = m.registry.get_sample_value
    assert val("memkd_records_in_total") == 3
    assert val("memkd_line_images_total", {"line": "A"}) == 2
    assert val("memkd_line_anomalies_total", {"line": "A"}) == 1
    assert val("memkd_results_total", {"line": "A"}) == 1
    assert val("memkd_dead_letters_total", {"code": "decode-error"}) == 1
    assert val("memkd_batch_size_count") == 1
    assert val("memkd_line_cache_hits_total", {"line": "A"}) == 1
    assert val("memkd_line_cache_misses_total", {"line": "A"}) == 1
    assert val("memkd_line_swaps_total", {"line": "A"}) == 1
    assert val("memkd_line_swap_failures_total", {"line": "A"}) == 1
    assert val("memkd_model_version", {"line": "A"}) == 8
    assert val("memkd_consumer_lag", {"topic": "t", "partition": "0"}) == 12
    assert val("memkd_line_score_count", {"line": "A"}) == 2
    assert val("memkd_stage_seconds_count", {"stage": "decode"}) == 1
    m.drop_lag("t", 0)
    m.drop_lag("t", 0)  # twice is fine
    assert val("memkd_consumer_lag", {"topic": "t", "partition": "0"}) is None


def test_two_metrics_objects_do_not_collide() -> None:
    a, b = WorkerMetrics(), WorkerMetrics()
    a.record_in()
    assert b.registry.get_sample_value("memkd_records_in_total") == 0


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

"""WorkerMetrics: each hook records its sample, and two workers' registries never collide."""

from __future__ import annotations

from memkd_stream.worker.metrics import WorkerMetrics


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


def test_heartbeat_gauges_show_what_healthz_judges() -> None:
    from memkd_stream.worker.health import Heartbeats

    clock = [100.0]
    beats = Heartbeats(clock=lambda: clock[0])
    beats.register("consumer", 30.0)
    m = WorkerMetrics(heartbeats=beats)
    val = m.registry.get_sample_value
    clock[0] = 112.0
    with beats.working("decode", 60.0):
        clock[0] = 145.0
        assert val("memkd_heartbeat_age_seconds", {"thread": "consumer"}) == 45.0
        assert val("memkd_heartbeat_limit_seconds", {"thread": "consumer"}) == 30.0
        assert val("memkd_heartbeat_age_seconds", {"thread": "decode"}) == 33.0
        assert beats.stale() == {"consumer": 45.0}  # the same judgement /healthz makes
    assert val("memkd_heartbeat_age_seconds", {"thread": "decode"}) is None  # work finished


def test_per_line_traffic_and_late_images_label_only_known_lines() -> None:
    m = WorkerMetrics()
    m.limit_lines_to(lambda line: line == "A")
    m.line_record_in("A")
    m.line_record_in("invented-key")
    m.late_image("A", "score")
    m.late_image("invented-key", "dead-letter")
    val = m.registry.get_sample_value
    assert val("memkd_line_records_in_total", {"line": "A"}) == 1
    assert val("memkd_line_records_in_total", {"line": "_other"}) == 1
    assert val("memkd_late_images_total", {"line": "_other", "policy": "dead-letter"}) == 1

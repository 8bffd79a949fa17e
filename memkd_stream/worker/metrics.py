"""Prometheus metrics of the worker (DESIGN.md §6).

Everything an operator needs on a dashboard: records in/out/dead-lettered by code, batch sizes,
latency per stage and end to end, consumer lag, assignment, the line cache (hits, misses, swaps,
refused swaps, version served) and, per line, the anomaly rate and a score histogram so drift
shows without reading results. One ``CollectorRegistry`` per ``WorkerMetrics`` (not the global
default), so tests and several workers in one process never collide.

The engine and hot swapper call the line-cache hooks (``cache_hit``, ``cache_miss``, ``swap``,
``swap_failed``, ``version_served``); the worker calls the rest. The heartbeat gauges are read
from ``health.Heartbeats`` at scrape time, so an alert sees a thread going stale before the
liveness probe restarts the pod, and after, in the restarts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from memkd_stream.worker.health import Heartbeats

__all__ = ["OTHER_LINES", "STAGES", "WorkerMetrics"]

# The label value of every line id that does not exist in Redis: a sender invents keys freely,
# and one series per invented key would grow /metrics without bound. No line id can be this
# (line ids start with a letter or digit).
OTHER_LINES = "_other"

# The time split the bench reports and the worker measures per record.
STAGES = ("decode", "batch_wait", "forward", "encode", "produce")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
# Raw image scores (top 1 % mean or max of the blurred anomaly map) are small positive numbers
# whose scale depends on the backbone; a geometric ladder covers the teachers.
_SCORE_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class WorkerMetrics:
    """The worker's metrics on their own registry (served by ``health.HealthServer``)."""

    def __init__(
        self, registry: CollectorRegistry | None = None, heartbeats: Heartbeats | None = None
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        if heartbeats is not None:
            self.registry.register(_HeartbeatCollector(heartbeats))
        self._line_exists: Callable[[str], bool] = lambda _line: True
        r = self.registry
        self.records_in = Counter(
            "memkd_records_in", "Request records consumed from the inspect topic", registry=r
        )
        self.results_out = Counter(
            "memkd_results", "Result records acknowledged by the broker", ["line"], registry=r
        )
        self.dead_letters = Counter(
            "memkd_dead_letters",
            "Dead-letter records acknowledged, by error code",
            ["code"],
            registry=r,
        )
        self.headers_ignored = Counter(
            "memkd_headers_ignored",
            "Optional request headers (memkd-sent-at, traceparent) malformed or repeated, "
            "passed through and ignored",
            ["header"],
            registry=r,
        )
        self.batch_size = Histogram(
            "memkd_batch_size", "Images per model batch", buckets=_BATCH_BUCKETS, registry=r
        )
        self.queue_seconds = Histogram(
            "memkd_queue_seconds",
            "From record received to its batch starting",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.infer_seconds = Histogram(
            "memkd_infer_seconds",
            "Model forward time per batch",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end_seconds = Histogram(
            "memkd_end_to_end_seconds",
            "From memkd-sent-at (else the record timestamp) to the result being acknowledged",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "memkd_stage_seconds",
            "Per-record time spent in each pipeline stage",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "memkd_consumer_lag",
            "Records behind the partition's high watermark",
            ["topic", "partition"],
            registry=r,
        )
        self.partitions_assigned = Gauge(
            "memkd_partitions_assigned", "Partitions assigned to this worker", registry=r
        )
        self.in_flight = Gauge(
            "memkd_in_flight_records", "Records consumed but not yet acknowledged", registry=r
        )
        self.paused = Gauge(
            "memkd_paused_partitions",
            "Partitions paused (backpressure or unavailable line)",
            registry=r,
        )
        self.device_faults = Counter(
            "memkd_device_faults",
            "Device faults (every batch fails): the worker stops and exits 4",
            registry=r,
        )
        self.commit_failures = Counter(
            "memkd_offset_commit_failures",
            "Offset commits refused (retried next round), by error; a steady rate means the "
            "group is stuck and a restart would re-deliver everything since the last commit",
            ["error"],
            registry=r,
        )
        self.last_commit = Gauge(
            "memkd_offset_last_commit_timestamp_seconds",
            "Unix time of the last successful offset commit",
            registry=r,
        )
        self.stranded_rejoins = Counter(
            "memkd_stranded_rejoins",
            "Rejoins forced on a consumer stuck in a rebalance nothing would finish "
            "(kafka-python 3.0; memkd_stream.broker.stranded_join)",
            registry=r,
        )
        self.group_generation = Gauge(
            "memkd_group_generation",
            "The consumer group generation this worker is in; each rebalance adds one, so a "
            "steadily rising value is a rebalance storm",
            registry=r,
        )
        self.broker_reachable = Gauge(
            "memkd_broker_reachable", "1 when the last broker probe succeeded", registry=r
        )
        self.cache_hits = Counter(
            "memkd_line_cache_hits", "Line model cache hits", ["line"], registry=r
        )
        self.cache_misses = Counter(
            "memkd_line_cache_misses", "Line model cache misses (loads)", ["line"], registry=r
        )
        self.swaps = Counter(
            "memkd_line_swaps", "Line model versions swapped in", ["line"], registry=r
        )
        self.swap_failures = Counter(
            "memkd_line_swap_failures",
            "New line versions refused (old one kept)",
            ["line"],
            registry=r,
        )
        self.model_version = Gauge(
            "memkd_model_version",
            "Version of the line's model that scored last",
            ["line"],
            registry=r,
        )
        self.line_unavailable = Gauge(
            "memkd_line_unavailable",
            "1 while the line's model cannot be loaded",
            ["line"],
            registry=r,
        )
        self.line_images = Counter(
            "memkd_line_images", "Images scored per line", ["line"], registry=r
        )
        self.line_anomalies = Counter(
            "memkd_line_anomalies", "Images scored anomalous per line", ["line"], registry=r
        )
        self.line_records_in = Counter(
            "memkd_line_records_in",
            "Requests consumed per line (keys that are no line: _other)",
            ["line"],
            registry=r,
        )
        self.late_images = Counter(
            "memkd_late_images",
            "Images older than worker.max_age_ms when they would be scored, by the late policy "
            "applied (score: scored with late_ms; dead-letter: dead-lettered stale)",
            ["line", "policy"],
            registry=r,
        )
        self.line_score = Histogram(
            "memkd_line_score",
            "Raw image scores per line",
            ["line"],
            buckets=_SCORE_BUCKETS,
            registry=r,
        )
        # Shadow scoring (lines shadow): how often the tried version's verdict differs from the
        # active one's, and how often it failed or was refused (never costing a result).
        self.shadow_verdicts = Counter(
            "memkd_shadow_verdicts",
            "Images scored by a line's shadow version, by agreement with the active verdict",
            ["line", "agreement"],
            registry=r,
        )
        self.shadow_failures = Counter(
            "memkd_shadow_failures",
            "Shadow versions refused or failing to score (the active result is unaffected)",
            ["line"],
            registry=r,
        )

    def limit_lines_to(self, exists: Callable[[str], bool]) -> None:
        """Label per line only the lines ``exists`` knows; all others count as ``_other``."""
        self._line_exists = exists

    def _line(self, line: str) -> str:
        return line if self._line_exists(line) else OTHER_LINES

    # ------------------------------------------------------------ engine / hot swap hooks
    def cache_hit(self, line: str) -> None:
        self.cache_hits.labels(self._line(line)).inc()

    def cache_miss(self, line: str) -> None:
        self.cache_misses.labels(self._line(line)).inc()

    def swap(self, line: str, version: int) -> None:
        self.swaps.labels(self._line(line)).inc()
        self.model_version.labels(self._line(line)).set(version)

    def swap_failed(self, line: str) -> None:
        self.swap_failures.labels(self._line(line)).inc()

    def shadow_failed(self, line: str) -> None:
        self.shadow_failures.labels(self._line(line)).inc()

    def shadow_scored(self, line: str, same_verdict: bool) -> None:
        agreement = "same" if same_verdict else "different"
        self.shadow_verdicts.labels(self._line(line), agreement).inc()

    def version_served(self, line: str, version: int) -> None:
        self.model_version.labels(self._line(line)).set(version)

    # ------------------------------------------------------------ worker hooks
    def commit_failed(self, error: str) -> None:
        self.commit_failures.labels(error).inc()

    def committed(self) -> None:
        self.last_commit.set_to_current_time()

    def record_in(self, n: int = 1) -> None:
        self.records_in.inc(n)

    def line_record_in(self, line: str) -> None:
        """A request of ``line`` parsed (the per-line traffic "no results" alerts compare to)."""
        self.line_records_in.labels(self._line(line)).inc()

    def late_image(self, line: str, policy: str) -> None:
        self.late_images.labels(self._line(line), str(policy)).inc()

    def scored(self, line: str, version: int, score: float, anomalous: bool) -> None:
        """One image scored (counted when computed; delivery is counted by ``result_acked``)."""
        self.line_images.labels(self._line(line)).inc()
        if anomalous:
            self.line_anomalies.labels(self._line(line)).inc()
        self.line_score.labels(self._line(line)).observe(score)
        self.model_version.labels(self._line(line)).set(version)

    def result_acked(self, line: str, end_to_end_s: float | None) -> None:
        self.results_out.labels(self._line(line)).inc()
        if end_to_end_s is not None and end_to_end_s >= 0:
            self.end_to_end_seconds.observe(end_to_end_s)

    def header_ignored(self, name: str) -> None:
        self.headers_ignored.labels(name).inc()

    def dead_lettered(self, code: str) -> None:
        self.dead_letters.labels(code).inc()

    def batch(self, size: int, infer_s: float) -> None:
        self.batch_size.observe(size)
        self.infer_seconds.observe(infer_s)

    def stage(self, name: str, seconds: float) -> None:
        self.stage_seconds.labels(name).observe(max(seconds, 0.0))

    def queued(self, seconds: float) -> None:
        self.queue_seconds.observe(max(seconds, 0.0))

    def lag(self, topic: str, partition: int, lag: int) -> None:
        self.consumer_lag.labels(topic, str(partition)).set(lag)

    def drop_lag(self, topic: str, partition: int) -> None:
        with contextlib.suppress(KeyError):
            self.consumer_lag.remove(topic, str(partition))

    def set_unavailable(self, line: str, unavailable: bool) -> None:
        self.line_unavailable.labels(self._line(line)).set(1 if unavailable else 0)


class _HeartbeatCollector(Collector):
    """``memkd_heartbeat_age_seconds`` and ``memkd_heartbeat_limit_seconds`` per watched thread,
    read from the heartbeats when scraped: the thread is stuck (``/healthz`` fails) once the age
    exceeds the limit."""

    def __init__(self, heartbeats: Heartbeats) -> None:
        self.heartbeats = heartbeats

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        age = GaugeMetricFamily(
            "memkd_heartbeat_age_seconds",
            "Seconds since the thread last made progress (a running decode or load: since it "
            "started)",
            labels=["thread"],
        )
        limit = GaugeMetricFamily(
            "memkd_heartbeat_limit_seconds",
            "The age past which the thread counts as stuck and /healthz fails",
            labels=["thread"],
        )
        return age, limit

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        age, limit = self._families()
        for thread, (seconds, stale_after) in sorted(self.heartbeats.ages().items()):
            age.add_metric([thread], max(seconds, 0.0))
            limit.add_metric([thread], stale_after)
        yield age
        yield limit

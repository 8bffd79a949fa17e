"""Metric names on both sides of the monitoring contract (DESIGN.md §6): the series the worker's
``/metrics`` serves, and the metric names a PromQL expression (an alert, a recording rule, a
dashboard query) reads. The deploy tests compare the two so the dashboard and the alerts cannot
drift from the code.

No PromQL parser ships with the project, and a metric name is the one thing needed here, so
``promql_metric_names`` strips what cannot be one (strings, label matchers, ranges, grouping
label lists, Grafana variables, numbers and durations, keywords, function calls) and keeps the
identifiers left. Unbalanced brackets or quotes are an error: a half-typed query would otherwise
yield wrong names quietly.
"""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, generate_latest

__all__ = ["ALLOWED_ELSEWHERE", "exposed_series", "promql_metric_names", "worker_registry"]

# Series the rules and dashboard read that the worker does not serve, each with its source.
ALLOWED_ELSEWHERE = {
    "kube_pod_container_status_restarts_total": "kube-state-metrics (restarts)",
    "kube_pod_container_status_last_terminated_exitcode": "kube-state-metrics (exit code 4)",
    "up": "Prometheus itself (scrape health)",
}

# What each exposition type adds to the family name (text format 0.0.4, prometheus-client).
_SUFFIXES = {
    "counter": ("",),  # the TYPE line names the _total series; _created: below
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("",),
    "stateset": ("",),
    "untyped": ("",),
}
_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan",
}  # fmt: skip
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
# Possessive (*+): "rate(" must not match as "rat" followed by "e".
_IDENTIFIER = re.compile(r"(?<![\w.:$])([A-Za-z_:][A-Za-z0-9_:]*+)(?!\s*\()")
_PAIRS = {")": "(", "]": "[", "}": "{"}


def worker_registry() -> CollectorRegistry:
    """The registry ``memkd-worker`` serves on /metrics, built as ``worker/__main__`` builds it."""
    from memkd_stream.worker.health import Heartbeats
    from memkd_stream.worker.metrics import WorkerMetrics

    return WorkerMetrics(heartbeats=Heartbeats()).registry


def exposed_series(registry: CollectorRegistry) -> set[str]:
    """Every series name that registry's exposition can contain, read from its ``# TYPE``
    lines (so labelled metrics without samples yet count too) with each type's suffixes."""
    names: set[str] = set()
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.update(name + suffix for suffix in _SUFFIXES[kind])
            if kind == "counter":
                names.add(name.removesuffix("_total") + "_created")
    return names


def _balanced(expr: str) -> None:
    stack: list[str] = []
    for char in _STRING.sub(" ", expr):
        if char in "([{":
            stack.append(char)
        elif char in _PAIRS:
            if not stack or stack.pop() != _PAIRS[char]:
                raise ValueError(f"unbalanced {char!r} in: {expr}")
        elif char in "\"'`":
            raise ValueError(f"unterminated string in: {expr}")
    if stack:
        raise ValueError(f"unclosed {stack[-1]!r} in: {expr}")


def promql_metric_names(expr: str) -> set[str]:
    """The metric (and recorded series) names ``expr`` reads."""
    _balanced(expr)
    text = _STRING.sub(" ", expr)
    text = re.sub(r"\$\{[^}]*\}|\$\w+", "1", text)  # Grafana variables ($__rate_interval, ...)
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # ranges and subqueries
    text = _GROUPING.sub(" ", text)
    return {name for name in _IDENTIFIER.findall(text) if name not in _KEYWORDS}

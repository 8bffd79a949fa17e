"""The Grafana dashboard and the PrometheusRule (deploy/k8s/monitoring, DESIGN.md §6) read only
metrics the worker serves, cover what a plant watches, and are well formed.

The rule file's schema is checked with the other manifests (test_deploy_manifests); here: every
metric name in every alert, recording rule and dashboard query is a series of the worker's own
/metrics (its registry built as the worker builds it, histogram and counter suffixes included),
a series a recording rule of the file defines, or on the explicit allow-list of series from
elsewhere (kube-state-metrics, Prometheus' up). The break-a-copy tests prove the check fails on a
misspelt name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.unit.deploy.deploy_checks import K8S_DIR, load_documents, render_k8s_dir
from tests.unit.deploy.metric_names import (
    ALLOWED_ELSEWHERE,
    exposed_series,
    promql_metric_names,
    worker_registry,
)

RULE_FILE = K8S_DIR / "monitoring" / "prometheusrule.yaml"
DASHBOARD_FILE = K8S_DIR / "monitoring" / "memkd-dashboard.json"
SEVERITIES = {"page", "warning"}
# The alerts the plant pages or is warned on (DESIGN.md §6), by what they are about.
REQUIRED_ALERTS = {
    "MemkdConsumerLagGrowing": "page",
    "MemkdNoResultsForLine": "page",
    "MemkdDeviceFault": "page",
    "MemkdWorkerRestarting": "page",
    "MemkdWorkerThreadStuck": "page",
    "MemkdDeadLetterShareHigh": "warning",
    "MemkdLineAnomalyRateUnusual": "warning",
}
# What the dashboard must show (issue 17): the series each of those panels is built on.
REQUIRED_ON_DASHBOARD = {
    "throughput": "memkd_records_in_total",
    "end-to-end latency percentiles": "memkd_end_to_end_seconds_bucket",
    "consumer lag": "memkd_consumer_lag",
    "dead letters by code": "memkd_dead_letters_total",
    "batch size": "memkd_batch_size_bucket",
    "cache": "memkd_line_cache_hits_total",
    "swaps": "memkd_line_swaps_total",
    "per-line anomaly rate": "memkd_line_anomalies_total",
    "score distribution": "memkd_line_score_bucket",
    "version served per line": "memkd_model_version",
}
# kubectl apply keeps the whole object in an annotation, which may not exceed 256 KiB.
MAX_CONFIGMAP_BYTES = 256 * 1024
_LABEL_VALUES = re.compile(r"label_values\((?P<expr>.+),\s*(?P<label>\w+)\s*\)")


def _rule_doc() -> dict[str, Any]:
    (doc,) = load_documents(RULE_FILE)
    return doc


def _rules(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for group in doc["spec"]["groups"]:
        yield from group["rules"]


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels of a collapsed row


def _dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable."""
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            match = _LABEL_VALUES.fullmatch(query)
            assert match, f"variable {variable['name']}: only label_values(...) is understood"
            yield f"variable {variable['name']}", match["expr"]


def unknown_names(rule_doc: dict[str, Any], dashboard: dict[str, Any]) -> dict[str, set[str]]:
    """Per expression, the names it reads that nothing serves; {} when all are known."""
    known = exposed_series(worker_registry()) | set(ALLOWED_ELSEWHERE)
    known |= {rule["record"] for rule in _rules(rule_doc) if "record" in rule}
    queries = [
        (rule.get("alert") or rule["record"], str(rule["expr"])) for rule in _rules(rule_doc)
    ]
    queries += list(_dashboard_queries(dashboard))
    problems = {where: promql_metric_names(expr) - known for where, expr in queries}
    return {where: names for where, names in problems.items() if names}


@pytest.fixture(scope="module")
def rule_doc() -> dict[str, Any]:
    return _rule_doc()


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text())


# ---------------------------------------------------------------- names agree with the code


def test_every_metric_the_rules_and_the_dashboard_read_is_served(
    rule_doc: dict[str, Any], dashboard: dict[str, Any]
) -> None:
    assert unknown_names(rule_doc, dashboard) == {}


def test_the_allow_list_is_only_what_the_worker_does_not_serve(
    rule_doc: dict[str, Any], dashboard: dict[str, Any]
) -> None:
    served = exposed_series(worker_registry())
    assert not set(ALLOWED_ELSEWHERE) & served
    used = set().union(
        *(promql_metric_names(str(r["expr"])) for r in _rules(rule_doc)),
        *(promql_metric_names(expr) for _, expr in _dashboard_queries(dashboard)),
    )
    assert set(ALLOWED_ELSEWHERE) <= used, "an allow-listed name nothing reads: remove it"


@pytest.mark.parametrize(
    ("where", "old", "new", "caught"),
    [
        ("rule", "(memkd_consumer_lag)", "(memkd_consumer_lags)", "memkd_consumer_lags"),
        (
            "rule",
            "> memkd_heartbeat_limit_seconds",
            "> memkd_heartbeat_limit",
            "memkd_heartbeat_limit",
        ),
        (
            "rule",
            "memkd:line_images:rate1h * 3600",
            "memkd:line_image:rate1h * 3600",
            "memkd:line_image:rate1h",
        ),
        ("dashboard", "memkd_results_total", "memkd_results", "memkd_results"),  # no _total
        ("dashboard", "memkd_batch_size_bucket", "memkd_batch_size", "memkd_batch_size"),
    ],
)
def test_a_misspelt_name_is_caught(
    rule_doc: dict[str, Any],
    dashboard: dict[str, Any],
    where: str,
    old: str,
    new: str,
    caught: str,
) -> None:
    path = RULE_FILE if where == "rule" else DASHBOARD_FILE
    text = path.read_text()
    assert old in text
    broken = text.replace(old, new, 1)
    if where == "rule":
        problems = unknown_names(yaml.safe_load(broken), dashboard)
    else:
        problems = unknown_names(rule_doc, json.loads(broken))
    assert set().union(*problems.values()) == {caught}


def test_the_name_reader_understands_promql() -> None:
    expr = """
      histogram_quantile(0.95, sum by (le, stage) (rate(memkd_stage_seconds_bucket{
        namespace="$namespace", stage!~"by|rate"}[$__rate_interval])))
      / ignoring (stage) group_left
      sum without (pod) (memkd:rec:rate1h offset 1h) > 1e3 and on (line) up == bool 0
    """
    assert promql_metric_names(expr) == {"memkd_stage_seconds_bucket", "memkd:rec:rate1h", "up"}
    for broken in ("sum(rate(x[5m])", 'x{a="b}', "x[5m"):
        with pytest.raises(ValueError):
            promql_metric_names(broken)


# ---------------------------------------------------------------- the alerts


def test_alerts_are_named_once_with_a_severity_and_words_for_the_person_paged(
    rule_doc: dict[str, Any],
) -> None:
    groups = [group["name"] for group in rule_doc["spec"]["groups"]]
    assert len(groups) == len(set(groups)), "group names are a list-map key: unique"
    alerts = [rule for rule in _rules(rule_doc) if "alert" in rule]
    names = [alert["alert"] for alert in alerts]
    assert len(names) == len(set(names))
    for alert in alerts:
        assert alert["labels"]["severity"] in SEVERITIES, alert["alert"]
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
    severities = {alert["alert"]: alert["labels"]["severity"] for alert in alerts}
    assert {name: severities.get(name) for name in REQUIRED_ALERTS} == REQUIRED_ALERTS


def test_recorded_series_follow_the_naming_convention(rule_doc: dict[str, Any]) -> None:
    records = [rule["record"] for rule in _rules(rule_doc) if "record" in rule]
    assert records and all(re.fullmatch(r"memkd:\w+:\w+", record) for record in records)


# ---------------------------------------------------------------- the dashboard


def test_dashboard_shows_what_a_plant_watches(dashboard: dict[str, Any]) -> None:
    used = set().union(*(promql_metric_names(expr) for _, expr in _dashboard_queries(dashboard)))
    missing = {what: name for what, name in REQUIRED_ON_DASHBOARD.items() if name not in used}
    assert missing == {}


def test_dashboard_is_well_formed(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = list(_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & mine, f"panel {panel['title']!r} overlaps another"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel.get("description"), f"panel {panel['title']!r} says what it shows"
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert panel["targets"] and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_dashboard_ships_as_a_sidecar_config_map_kubectl_can_apply() -> None:
    (config_map,) = [
        m.doc
        for m in render_k8s_dir(K8S_DIR)
        if m.doc["kind"] == "ConfigMap" and m.doc["metadata"]["name"] == "memkd-grafana-dashboard"
    ]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"][DASHBOARD_FILE.name]) == json.loads(
        DASHBOARD_FILE.read_text()
    )
    assert len(json.dumps(config_map).encode()) < MAX_CONFIGMAP_BYTES

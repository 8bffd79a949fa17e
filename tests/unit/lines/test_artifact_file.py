"""Artifact files before publishing: their record is read from the header alone, and a file that
is not a line artifact is refused with its path in the message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from memkd_stream.lines.artifact_file import read_artifact_record, sidecar_sha256
from memkd_stream.lines.errors import ArtifactRejected


def _safetensors(path: Path, metadata: dict[str, str] | None) -> Path:
    save_file({"w": np.zeros(3, np.float32)}, str(path), metadata=metadata)
    return path


def test_the_record_comes_from_the_header(tmp_path: Path) -> None:
    record = {"kind": "memkd-line-model", "model": {"backbone": "tf_efficientnet_lite0"}}
    path = _safetensors(tmp_path / "a.safetensors", {"memkd": json.dumps(record)})
    assert read_artifact_record(path) == record


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "does not exist"),
        (b"not a safetensors file", "is not a memkd line artifact"),
        ({"other": "{}"}, "is not a memkd line artifact"),
        ({"memkd": "[1, 2]"}, "is not an object"),
    ],
)
def test_what_is_not_an_artifact_is_refused_naming_the_file(
    tmp_path: Path, content: bytes | dict[str, str] | None, reason: str
) -> None:
    path = tmp_path / "x.safetensors"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, dict):
        _safetensors(path, content)
    with pytest.raises(ArtifactRejected, match=reason) as caught:
        read_artifact_record(path)
    assert str(path) in str(caught.value) and caught.value.code == "artifact-invalid"


def test_the_sidecar_digest_is_read_in_sha256sum_format_or_bare(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    assert sidecar_sha256(path) is None
    (tmp_path / "a.safetensors.sha256").write_text("ABCDEF  a.safetensors\n")
    assert sidecar_sha256(path) == "abcdef"
    (tmp_path / "a.safetensors.sha256").write_text("0123\n")
    assert sidecar_sha256(path) == "0123"

"""Artifact round trips, atomic writes, and refusal of tampered, foreign or mismatched files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from memkd.artifact import (
    ArtifactError,
    check_record_compatible,
    read_artifact,
    sha256_file,
    sidecar_path,
    write_artifact,
)
from memkd.errors import MemKDError
from safetensors.torch import save_file

RECORD = {
    "teacher": {"name": "tf_efficientnet_lite0", "channels": [24, 40, 112]},
    "calibration": {"threshold": 0.61},
    "roi": None,
}


def _tensors() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    weight = torch.randn(8, 4)
    return {
        "layer.weight": weight,
        "layer.tied": weight,  # shares storage: must still be written
        "bn.running_mean": torch.randn(8),
        "bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
        "memory.keys": torch.randn(50, 16),
    }


def test_round_trip_is_exact_in_fp32(tmp_path: Path) -> None:
    path = tmp_path / "line.safetensors"
    digest = write_artifact(path, _tensors(), RECORD)
    assert digest == sha256_file(path) == sha256_file(path, chunk_size=7)
    assert sidecar_path(path).read_text() == f"{digest}  line.safetensors\n"
    tensors, record = read_artifact(path)
    assert record == RECORD
    for key, value in _tensors().items():
        assert torch.equal(tensors[key], value), key
    assert tensors["bn.num_batches_tracked"].dtype == torch.int64
    # The same bytes, from memory (as the worker gets them from Redis).
    tensors_b, record_b = read_artifact(path.read_bytes(), expected_sha256=digest)
    assert record_b == RECORD and torch.equal(tensors_b["memory.keys"], tensors["memory.keys"])


def test_sidecar_is_sha256sum_compatible(tmp_path: Path) -> None:
    write_artifact(tmp_path / "a.safetensors", _tensors(), RECORD)
    done = subprocess.run(
        ["sha256sum", "--check", "a.safetensors.sha256"], cwd=tmp_path, capture_output=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("dtype", "stored", "tol"), [("fp16", "F16", 1e-3), ("bf16", "BF16", 1e-2)]
)
def test_half_precision_is_smaller_and_reads_back_as_fp32(
    tmp_path: Path, dtype: str, stored: str, tol: float
) -> None:
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    write_artifact(full, _tensors(), RECORD)
    write_artifact(half, _tensors(), RECORD, dtype=dtype)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    raw = half.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert header["memory.keys"]["dtype"] == stored
    assert header["bn.num_batches_tracked"]["dtype"] == "I64"
    tensors, _ = read_artifact(half)
    assert tensors["memory.keys"].dtype == torch.float32
    torch.testing.assert_close(
        tensors["memory.keys"], _tensors()["memory.keys"], rtol=tol, atol=tol
    )


def test_a_flipped_byte_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "line.safetensors"
    digest = write_artifact(path, _tensors(), RECORD)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # inside the tensor data: still a parseable file
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError) as caught:
        read_artifact(path)
    assert caught.value.code == "artifact-checksum"
    assert isinstance(caught.value, MemKDError)
    with pytest.raises(ArtifactError, match="changed or damaged"):
        read_artifact(bytes(data), expected_sha256=digest)


def test_missing_sidecar_is_an_error_unless_skipped(tmp_path: Path) -> None:
    path = tmp_path / "line.safetensors"
    write_artifact(path, _tensors(), RECORD)
    sidecar_path(path).unlink()
    with pytest.raises(ArtifactError, match=r"line\.safetensors\.sha256 is missing") as caught:
        read_artifact(path)
    assert caught.value.code == "artifact-checksum"
    _, record = read_artifact(path, require_checksum=False)
    assert record == RECORD


def test_garbage_and_foreign_files_are_refused(tmp_path: Path) -> None:
    cases = {
        "empty": b"",
        "short": b"abc",
        "huge header length": (2**40).to_bytes(8, "little") + b"{}",
        "pickle": b"\x80\x04\x95" + b"\x00" * 64,
        "json garbage": (5).to_bytes(8, "little") + b"{nope",
    }
    for label, data in cases.items():
        with pytest.raises(ArtifactError) as caught:
            read_artifact(data)
        assert caught.value.code == "artifact-corrupt", label
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"other": "x"})
    with pytest.raises(ArtifactError, match="not a memkd line artifact"):
        read_artifact(foreign, require_checksum=False)


def test_truncated_tensor_data_is_corrupt_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "line.safetensors"
    write_artifact(path, _tensors(), RECORD)
    with pytest.raises(ArtifactError) as caught:
        read_artifact(path.read_bytes()[:-16])
    assert caught.value.code == "artifact-corrupt"


def test_other_format_version_is_a_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "future.safetensors"
    save_file(
        {"w": torch.zeros(2)},
        str(path),
        metadata={"memkd": json.dumps(RECORD), "format_version": "99"},
    )
    with pytest.raises(ArtifactError, match="format '99'") as caught:
        read_artifact(path, require_checksum=False)
    assert caught.value.code == "artifact-mismatch"


def test_rewrite_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "line.safetensors"
    write_artifact(path, _tensors(), RECORD)
    second = dict(RECORD, calibration={"threshold": 0.7})
    write_artifact(path, _tensors(), second)
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # no temporary files left
        "line.safetensors",
        "line.safetensors.sha256",
    ]
    assert read_artifact(path)[1]["calibration"]["threshold"] == 0.7
    # Readable like any new file (umask applies), not 0600 like a temporary file.
    plain = tmp_path / "plain"
    plain.touch()
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "line.safetensors"
    digest = write_artifact(path, _tensors(), RECORD)
    with pytest.raises(ValueError):
        write_artifact(path, _tensors(), {"threshold": float("nan")})  # not valid JSON
    with pytest.raises(TypeError):
        write_artifact(path, {"w": [1.0]}, RECORD)  # type: ignore[dict-item]
    assert sha256_file(path) == digest
    assert len(list(tmp_path.iterdir())) == 2
    with pytest.raises(ValueError, match="dtype"):
        write_artifact(path, _tensors(), RECORD, dtype="int8")


def test_record_must_match_the_teacher() -> None:
    check_record_compatible(RECORD, "tf_efficientnet_lite0", (24, 40, 112))
    with pytest.raises(ArtifactError, match="trained with teacher tf_efficientnet_lite0") as caught:
        check_record_compatible(RECORD, "wide_resnet50_2", (256, 512, 1024))
    assert caught.value.code == "artifact-mismatch"
    with pytest.raises(ArtifactError, match="does not say which teacher"):
        check_record_compatible({"calibration": {}}, "wide_resnet50_2", (256, 512, 1024))

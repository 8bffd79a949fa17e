"""Delta artifacts: what they hold, how they compose, and which parents they refuse."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from memkd.anomaly import Calibration
from memkd.artifact import ArtifactError, read_artifact, sha256_file
from memkd.backbones import Teacher
from memkd.config import ModelConfig
from memkd.delta import (
    compose,
    load_delta,
    memory_tensor_names,
    save_delta,
    save_recalibrated,
)
from memkd.line_model import LineModel
from memkd.lineage import ParentRef
from memkd.network import MemKDStudent

from tests.support.models import LITE0

CFG = ModelConfig(backbone=LITE0, input_size=64, memory_items=8)


def _model(teacher: Teacher, seed: int = 0, threshold: float = 0.5) -> LineModel:
    torch.manual_seed(seed)
    student = MemKDStudent(CFG, teacher.channels, teacher.spec.signed_features)
    calibration = Calibration.from_scores([0.1, 0.2, 0.3, 0.25])
    return LineModel(
        CFG, student, teacher.describe(), dataclasses.replace(calibration, threshold=threshold)
    )


@pytest.fixture
def parent(tmp_path: Path, lite0: Teacher) -> tuple[Path, LineModel]:
    model = _model(lite0)
    path = tmp_path / "parent.safetensors"
    model.save(path)
    return path, model


def _refitted(parent: LineModel, lite0: Teacher) -> LineModel:
    """The parent with other memories and another threshold (what a memory-only refit makes)."""
    model = LineModel.from_record(parent.record(), parent.student.state_dict())
    with torch.no_grad():
        for memory in model.student.memory_list:
            memory.keys.add_(1.0)
            memory.values.mul_(-1.0)
    model.calibration = dataclasses.replace(parent.calibration, threshold=0.7)
    return model


def test_a_memory_delta_holds_only_the_memories_and_composes_to_the_refitted_model(
    tmp_path: Path, lite0: Teacher, parent: tuple[Path, LineModel]
) -> None:
    parent_path, parent_model = parent
    refitted = _refitted(parent_model, lite0)
    ref = ParentRef(sha256_file(parent_path), 3, "A")
    delta_path = tmp_path / "delta.safetensors"
    save_delta(refitted, delta_path, ref, memory_tensor_names(refitted))
    tensors, record = read_artifact(delta_path)
    assert sorted(tensors) == sorted(memory_tensor_names(refitted)) == [
        "memories.0.keys", "memories.0.values", "memories.1.keys", "memories.1.values",
    ]  # fmt: skip
    assert record["parent"] == ref.to_dict() and record["calibration"]["threshold"] == 0.7
    assert delta_path.stat().st_size < parent_path.stat().st_size / 10

    composed = load_delta(delta_path, parent_path, lite0)
    want = refitted.student.state_dict()
    assert all(torch.equal(composed.student.state_dict()[k], want[k]) for k in want)
    assert composed.threshold == 0.7
    assert composed.provenance["lineage"]["parent"] == ref.to_dict()
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(composed.score(lite0, x).scores, refitted.to("cpu").score(lite0, x).scores)


def test_a_threshold_delta_holds_no_tensor(
    tmp_path: Path, lite0: Teacher, parent: tuple[Path, LineModel]
) -> None:
    parent_path, parent_model = parent
    model = LineModel.from_record(parent_model.record(), parent_model.student.state_dict())
    model.calibration = parent_model.calibration.with_threshold(0.9)
    delta_path = tmp_path / "threshold.safetensors"
    save_delta(model, delta_path, ParentRef(sha256_file(parent_path)), [])
    assert read_artifact(delta_path)[0] == {}
    composed = load_delta(delta_path.read_bytes(), parent_path.read_bytes(), lite0)
    assert composed.threshold == 0.9


def test_composing_onto_a_loaded_parent_needs_its_sha256(
    tmp_path: Path, lite0: Teacher, parent: tuple[Path, LineModel]
) -> None:
    parent_path, parent_model = parent
    delta_path = tmp_path / "delta.safetensors"
    refitted = _refitted(parent_model, lite0)
    ref = ParentRef(sha256_file(parent_path))
    save_delta(refitted, delta_path, ref, memory_tensor_names(refitted))
    with pytest.raises(ValueError, match="sha256"):
        load_delta(delta_path, parent_model)
    composed = load_delta(delta_path, parent_model, parent_sha256=sha256_file(parent_path))
    assert torch.equal(
        composed.student.state_dict()["memories.1.values"],
        refitted.student.state_dict()["memories.1.values"],
    )


def test_another_parent_is_refused(
    tmp_path: Path, lite0: Teacher, parent: tuple[Path, LineModel]
) -> None:
    parent_path, parent_model = parent
    delta_path = tmp_path / "delta.safetensors"
    save_delta(parent_model, delta_path, ParentRef(sha256_file(parent_path)), [])
    other = tmp_path / "other.safetensors"
    _model(lite0, seed=1).save(other)
    with pytest.raises(ArtifactError, match="made from the artifact") as err:
        load_delta(delta_path, other, lite0)
    assert err.value.code == "artifact-mismatch"


def test_a_parent_of_another_network_or_a_delta_parent_is_refused(
    tmp_path: Path, lite0: Teacher, parent: tuple[Path, LineModel]
) -> None:
    parent_path, parent_model = parent
    tensors, record = read_artifact(parent_path)
    delta_path = tmp_path / "delta.safetensors"
    save_delta(parent_model, delta_path, ParentRef(sha256_file(parent_path)), [])
    d_tensors, d_record = read_artifact(delta_path)
    sha = sha256_file(parent_path)
    wider = {**record, "model": {**record["model"], "memory_items": 9}}
    with pytest.raises(ArtifactError, match="does not fit its parent"):
        compose(d_tensors, d_record, tensors, wider, sha)
    with pytest.raises(ArtifactError, match="must be a full artifact"):
        compose(d_tensors, d_record, tensors, d_record, sha)


def test_a_delta_alone_is_refused_with_directions(
    tmp_path: Path, lite0: Teacher, parent: tuple[Path, LineModel]
) -> None:
    parent_path, parent_model = parent
    delta_path = tmp_path / "delta.safetensors"
    save_delta(parent_model, delta_path, ParentRef(sha256_file(parent_path)), [])
    with pytest.raises(ArtifactError, match="--parent FULL"):
        LineModel.load(delta_path, lite0)
    with pytest.raises(ArtifactError, match="not a delta"):
        load_delta(parent_path, parent_path, lite0)
    with pytest.raises(ValueError, match="not tensors of this student"):
        save_delta(parent_model, delta_path, ParentRef(sha256_file(parent_path)), ["nope"])


def test_a_recalibrated_copy_of_a_delta_keeps_its_tensors_and_full_parent(
    tmp_path: Path, lite0: Teacher, parent: tuple[Path, LineModel]
) -> None:
    parent_path, parent_model = parent
    refitted = _refitted(parent_model, lite0)
    ref = ParentRef(sha256_file(parent_path), 1, "A")
    first = tmp_path / "refit.safetensors"
    save_delta(refitted, first, ref, memory_tensor_names(refitted))
    tensors, record = read_artifact(first)
    moved = refitted.calibration.with_threshold(1.25)
    second = tmp_path / "threshold.safetensors"
    save_recalibrated(second, record, tensors, moved, ref, {"to": 1.25})
    composed = load_delta(second, parent_path, lite0)
    assert composed.threshold == 1.25 and composed.provenance["recalibrated"] == {"to": 1.25}
    want = refitted.student.state_dict()["memories.0.keys"]
    assert torch.equal(composed.student.state_dict()["memories.0.keys"], want)
    with pytest.raises(ValueError, match="all of them"):
        save_recalibrated(second, record, {}, moved, ref, {})
    with pytest.raises(ValueError, match="full parent"):
        save_recalibrated(second, record, tensors, moved, ParentRef("cd" * 32), {})

"""LineModel: scoring, the record, and the artifact round trip through memkd.artifact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from memkd.anomaly import image_scores
from memkd.artifact import ArtifactError
from memkd.backbones import Teacher, load_teacher
from memkd.config import ModelConfig, TrainConfig
from memkd.line_model import LineModel
from memkd.network import MemKDStudent
from memkd.precision import Precision, PrecisionError, resolve_precision
from memkd.train import fit
from PIL import Image
from skimage import data

from tests.support.models import LITE0


def _crops(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    grass = data.grass()
    out = []
    for _ in range(n):
        y, x = rng.integers(0, grass.shape[0] - 96, 2)
        out.append(Image.fromarray(grass[y : y + 96, x : x + 96]).convert("RGB"))
    return out


@pytest.fixture(scope="module")
def trained(lite0: Teacher) -> LineModel:
    cfg = ModelConfig(backbone=LITE0, input_size=64, memory_items=10)
    return fit(_crops(12), cfg, TrainConfig(steps=3, batch_size=4, exemplars=4), lite0).model


def test_score_returns_maps_and_scores(trained: LineModel, lite0: Teacher) -> None:
    res = trained.score(lite0, torch.randn(3, 3, 64, 64))
    assert res.maps.shape == (3, 1, 64, 64) and res.scores.shape == (3,)
    torch.testing.assert_close(res.scores, image_scores(res.maps, trained.config.score_topk))
    assert trained.config.score_topk == 0.01  # the default: the mean of the top 1 % of pixels
    assert not res.maps.requires_grad
    assert not trained.student.training


def test_record_is_json_and_complete(trained: LineModel) -> None:
    rec = json.loads(json.dumps(trained.record()))
    assert rec["model"]["backbone"] == "tf_efficientnet_lite0"
    assert rec["teacher"]["channels"] == [24, 40, 112]
    assert rec["normalization"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert rec["calibration"]["threshold"] > 0
    assert rec["model"]["memory"] is True and rec["model"]["width_mult"] == 1.0
    for key in ("n_train", "seed", "code_version", "created_at", "train_config"):
        assert key in rec["provenance"], key


def test_artifact_round_trip_gives_identical_scores(
    trained: LineModel, lite0: Teacher, tmp_path: Path
) -> None:
    path = tmp_path / "line.safetensors"
    sha = trained.save(path)
    loaded = LineModel.load(path, lite0)
    x = torch.randn(2, 3, 64, 64)
    fp32 = Precision.FP32  # exact on any machine (auto is bf16 on one with native bf16)
    assert torch.equal(trained.score(lite0, x, fp32).maps, loaded.score(lite0, x, fp32).maps)
    assert loaded.calibration == trained.calibration and loaded.roi == trained.roi
    assert loaded.calibrated_precision is trained.calibrated_precision
    from_bytes = LineModel.load(path.read_bytes(), lite0, expected_sha256=sha)
    assert torch.equal(
        trained.score(lite0, x, fp32).scores, from_bytes.score(lite0, x, fp32).scores
    )
    assert loaded.nbytes == trained.nbytes > 0


def test_half_precision_artifact_is_smaller_and_close(
    trained: LineModel, lite0: Teacher, tmp_path: Path
) -> None:
    full, half = tmp_path / "fp32.safetensors", tmp_path / "fp16.safetensors"
    trained.save(full)
    trained.save(half, dtype="fp16")
    assert half.stat().st_size < 0.6 * full.stat().st_size
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(
        LineModel.load(half, lite0).score(lite0, x, "fp32").scores,
        trained.score(lite0, x, "fp32").scores,
        rtol=2e-2,
        atol=2e-2,
    )


def test_flipped_byte_is_refused(trained: LineModel, lite0: Teacher, tmp_path: Path) -> None:
    path = tmp_path / "line.safetensors"
    trained.save(path)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError) as err:
        LineModel.load(path, lite0)
    assert err.value.code == "artifact-checksum"


def test_other_teacher_is_refused(trained: LineModel, wrn_random: Teacher, tmp_path: Path) -> None:
    path = tmp_path / "line.safetensors"
    trained.save(path)
    with pytest.raises(ArtifactError) as err:
        LineModel.load(path, wrn_random)
    assert err.value.code == "artifact-mismatch"
    other_weights = load_teacher("tf_efficientnet_lite0", random_weights=True)
    with pytest.raises(ArtifactError, match="fingerprint") as err:
        LineModel.load(path, other_weights)
    assert err.value.code == "artifact-mismatch"


def test_roi_is_kept(lite0: Teacher, tmp_path: Path) -> None:
    cfg = ModelConfig(backbone=LITE0, input_size=64, memory=False)
    model = fit(_crops(6), cfg, TrainConfig(steps=1, batch_size=2), lite0, roi=(8, 8, 64, 64)).model
    model.save(tmp_path / "roi.safetensors")
    assert LineModel.load(tmp_path / "roi.safetensors", lite0).roi == (8, 8, 64, 64)


def test_the_calibration_precision_is_recorded(trained: LineModel, tmp_path: Path) -> None:
    assert trained.provenance["precision"] == resolve_precision("auto", "cpu").value
    assert trained.calibrated_precision is Precision(trained.provenance["precision"])
    record = trained.record()
    for device, expected in (("cpu", Precision.FP32), ("cuda:0", Precision.BF16)):
        # Before it was recorded, fit used bf16 autocast on CUDA and fp32 elsewhere.
        old = {k: v for k, v in record["provenance"].items() if k != "precision"}
        model = LineModel.from_record(record | {"provenance": old | {"device": device}})
        assert model.calibrated_precision is expected
    for bad in ("fp8", "auto"):
        with pytest.raises(ArtifactError, match="rebuilt") as err:
            LineModel.from_record(record | {"provenance": {"precision": bad}})
        assert err.value.code == "artifact-mismatch"


def test_fp16_scoring_on_a_cpu_is_refused(trained: LineModel, lite0: Teacher) -> None:
    with pytest.raises(PrecisionError, match="fp16 needs a CUDA GPU"):
        trained.score(lite0, torch.randn(1, 3, 64, 64), "fp16")


def test_teacher_features_once_serve_two_students(lite0: Teacher) -> None:
    """Shadow scoring's premise: the features one model takes serve another with the same input."""
    cfg = ModelConfig(backbone=LITE0, input_size=64, memory_items=8)
    torch.manual_seed(0)
    first = LineModel(cfg, MemKDStudent(cfg, lite0.channels, True), lite0.describe())
    second = LineModel(cfg, MemKDStudent(cfg, lite0.channels, True), lite0.describe())
    x = torch.rand(2, 3, 64, 64)
    feats = first.teacher_features(lite0, x, "fp32")
    assert torch.equal(
        first.score_features(feats, "fp32").scores, first.score(lite0, x, "fp32").scores
    )
    assert torch.equal(
        second.score_features(feats, "fp32").maps, second.score(lite0, x, "fp32").maps
    )


def test_tiling_is_kept_and_only_readers_that_know_it_read_it(
    trained: LineModel, lite0: Teacher, tmp_path: Path
) -> None:
    from memkd.line_model import RECORD_SCHEMA, TILED_RECORD_SCHEMA
    from memkd.tiling import Tiling

    assert trained.record()["schema"] == RECORD_SCHEMA and "tiling" not in trained.record()
    trained.tiling = Tiling(128, 16)
    try:
        record = trained.record()
        trained.save(tmp_path / "tiled.safetensors")
    finally:
        trained.tiling = None
    # schema 2: a memkd that predates tiling refuses the line instead of scoring whole frames
    assert record["schema"] == TILED_RECORD_SCHEMA and record["tiling"] == {
        "size": 128,
        "overlap": 16,
    }
    assert LineModel.load(tmp_path / "tiled.safetensors", lite0).tiling == Tiling(128, 16)
    with pytest.raises(ArtifactError, match="rebuilt"):
        LineModel.from_record(record | {"tiling": {"size": 128, "overlap": 200}})

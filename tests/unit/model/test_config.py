"""Settings validate their ranges and round-trip through the JSON record."""

from __future__ import annotations

import json

import pytest
from memkd.config import ModelConfig, TrainConfig
from memkd.errors import ConfigError
from memkd.precision import Precision


def test_round_trip_through_json() -> None:
    m = ModelConfig(backbone="wide_resnet50_2", width_mult=2.0, fusion="add", temperature=0.5)
    assert ModelConfig.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    t = TrainConfig(steps=7, betas=(0.9, 0.99), threshold_rule="quantile", precision="bf16")
    assert TrainConfig.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    assert t.precision is Precision.BF16 and t.to_dict()["precision"] == "bf16"


@pytest.mark.parametrize(
    "bad",
    [
        {"input_size": 100},
        {"input_size": 32},
        {"width_mult": 0},
        {"temperature": 0},
        {"fusion": "mul"},
        {"memory_items": 0},
    ],
)
def test_model_config_ranges(bad: dict) -> None:
    with pytest.raises(ConfigError):
        ModelConfig(**bad)


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ConfigError, match="colour"):
        ModelConfig.from_dict({"colour": "red"})
    with pytest.raises(ConfigError):
        TrainConfig(threshold_rule="median")
    with pytest.raises(ConfigError, match="precision must be one of auto, fp32, bf16, fp16"):
        TrainConfig(precision="fp8")  # type: ignore[arg-type]


def test_an_artifact_that_names_no_image_score_keeps_the_maximum() -> None:
    """Records written before ``score_topk`` existed were calibrated on the map's maximum; a new
    default must not move their scores away from their thresholds."""
    legacy = {k: v for k, v in ModelConfig().to_dict().items() if k != "score_topk"}
    assert ModelConfig.from_dict(legacy).score_topk == 0.0
    assert ModelConfig().score_topk == 0.01
    assert ModelConfig.from_dict(ModelConfig().to_dict()).score_topk == 0.01


def test_the_default_teacher_is_lite2_and_an_artifact_naming_none_is_lite0s() -> None:
    """Lite2 became the default (model/README.md, "Arm 5"); a record without a backbone predates
    it and can only have been fitted with lite0."""
    assert ModelConfig().backbone == "tf_efficientnet_lite2"
    legacy = {k: v for k, v in ModelConfig().to_dict().items() if k != "backbone"}
    assert ModelConfig.from_dict(legacy).backbone == "tf_efficientnet_lite0"
    assert ModelConfig.from_dict(ModelConfig().to_dict()).backbone == "tf_efficientnet_lite2"

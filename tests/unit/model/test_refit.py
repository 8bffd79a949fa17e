"""Memory-only refit: only the memories learn, BatchNorm stays put, a new threshold is set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from memkd.artifact import ArtifactError
from memkd.backbones import Teacher
from memkd.config import ModelConfig, TrainConfig
from memkd.refit import refit_memory
from memkd.train import fit
from PIL import Image
from skimage import data

from tests.support.models import LITE0

CFG = ModelConfig(backbone=LITE0, input_size=64, memory_items=8)
TCFG = TrainConfig(steps=3, batch_size=4, exemplars=3, holdout_fraction=0.25, precision="fp32")


def _crops(source: np.ndarray, n: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        y, x = rng.integers(0, source.shape[0] - 80, 2)
        out.append(Image.fromarray(source[y : y + 80, x : x + 80]).convert("RGB"))
    return out


@pytest.fixture(scope="module")
def parent(lite0: Teacher):
    return fit(_crops(data.brick(), 8, 0), CFG, TrainConfig(steps=2, batch_size=4), lite0).model


def test_only_the_memories_change_and_batchnorm_statistics_stay(parent, lite0: Teacher) -> None:
    before = {k: v.clone() for k, v in parent.student.state_dict().items()}
    calls: list[int] = []
    shifted = _crops(np.clip(data.brick().astype(np.int16) + 40, 0, 255).astype(np.uint8), 12, 1)
    result = refit_memory(parent, shifted, lite0, TCFG, lambda s, t, d: calls.append(s))
    after = result.model.student.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == [
        "memories.0.keys",
        "memories.0.values",
        "memories.1.keys",
        "memories.1.values",
    ]  # fmt: skip  (running_mean/var and num_batches_tracked included in "not changed")
    assert all(torch.equal(v, parent.student.state_dict()[k]) for k, v in before.items())
    assert calls == [1, 2, 3]
    rep = result.report
    assert (rep["n_train"], rep["n_holdout"], rep["calibration_source"]) == (9, 3, "holdout")
    assert result.model.calibration is not None and result.model.calibration.n == 3
    assert result.model.calibration.threshold != parent.calibration.threshold
    assert result.model.provenance["refit"]["kind"] == "memory"
    assert all(p.requires_grad for p in result.model.student.parameters())


def test_data_init_reseeds_the_memories_from_the_new_images(parent, lite0: Teacher) -> None:
    images = _crops(data.grass(), 8, 2)
    one_step = TrainConfig(steps=1, batch_size=4, exemplars=2, lr=1e-9, precision="fp32")
    kept = refit_memory(parent, images, lite0, one_step).model.student.state_dict()
    reseeded = refit_memory(parent, images, lite0, one_step, init="data").model.student
    old_keys = parent.student.state_dict()["memories.0.keys"]
    assert torch.allclose(kept["memories.0.keys"], old_keys, atol=1e-6)
    assert not torch.allclose(reseeded.state_dict()["memories.0.keys"], old_keys, atol=1e-3)


def test_a_line_without_memory_or_another_teacher_is_refused(
    parent, lite0: Teacher, wrn_random: Teacher
) -> None:
    plain_rd = ModelConfig(backbone=LITE0, input_size=64, memory=False)
    rd = fit(_crops(data.brick(), 6, 0), plain_rd, TrainConfig(steps=1, batch_size=4), lite0)
    with pytest.raises(ValueError, match="no memory"):
        refit_memory(rd.model, _crops(data.brick(), 6, 1), lite0, TCFG)
    with pytest.raises(ArtifactError, match="trained with teacher tf_efficientnet_lite0"):
        refit_memory(parent, _crops(data.brick(), 6, 1), wrn_random, TCFG)

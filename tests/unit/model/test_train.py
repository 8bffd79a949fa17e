"""fit: seeded, held-out calibration, progress reporting, schedule arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from memkd.backbones import Teacher
from memkd.config import ModelConfig, TrainConfig
from memkd.precision import PrecisionError
from memkd.train import fit, holdout_split
from PIL import Image
from skimage import data


def _crops(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    brick = data.brick()
    out = []
    for _ in range(n):
        y, x = rng.integers(0, brick.shape[0] - 80, 2)
        out.append(Image.fromarray(brick[y : y + 80, x : x + 80]).convert("RGB"))
    return out


CFG = ModelConfig(input_size=64, memory_items=8)


def test_fit_reports_progress_and_calibrates_on_held_out_images(lite0: Teacher) -> None:
    calls: list[tuple[int, int, dict[str, float]]] = []
    tcfg = TrainConfig(steps=4, batch_size=4, exemplars=3, holdout_fraction=0.25)
    res = fit(_crops(12), CFG, tcfg, lite0, progress=lambda s, t, d: calls.append((s, t, d)))
    assert [c[0] for c in calls] == [1, 2, 3, 4] and {c[1] for c in calls} == {4}
    assert set(calls[-1][2]) == {"kd", "nm", "orth", "loss"}
    rep = res.report
    assert (rep["n_train"], rep["n_holdout"], rep["calibration_source"]) == (9, 3, "holdout")
    assert len(rep["holdout_scores"]) == 3 and res.model.calibration is not None
    assert res.model.calibration.n == 3 and res.model.provenance["seed"] == 0


def test_same_seed_same_model_other_seed_other_model(lite0: Teacher) -> None:
    imgs = _crops(8)
    tcfg = TrainConfig(steps=2, batch_size=4, exemplars=2, precision="fp32")
    a = fit(imgs, CFG, tcfg, lite0).model.student.state_dict()
    b = fit(imgs, CFG, tcfg, lite0).model.student.state_dict()
    c = fit(imgs, CFG, TrainConfig(steps=2, batch_size=4, exemplars=2, seed=1), lite0)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["memories.0.keys"], c.model.student.state_dict()["memories.0.keys"])


def test_the_fit_precision_is_recorded_with_the_calibration(lite0: Teacher) -> None:
    tcfg = TrainConfig(steps=1, batch_size=4, exemplars=2, precision="bf16")  # emulated on CPU
    res = fit(_crops(6), ModelConfig(input_size=64, memory_items=4), tcfg, lite0)
    assert res.report["precision"] == res.model.provenance["precision"] == "bf16"
    assert res.model.calibration is not None and np.isfinite(res.report["holdout_scores"]).all()
    assert {type(v) for v in res.report["final_losses"].values()} == {float}


def test_fp16_on_a_cpu_fails_before_any_work(lite0: Teacher) -> None:
    with pytest.raises(PrecisionError, match="fp16 needs a CUDA GPU"):
        fit([], CFG, TrainConfig(precision="fp16"), lite0)  # no images: it never got there


def test_loss_goes_down(lite0: Teacher) -> None:
    tcfg = TrainConfig(steps=30, batch_size=8, exemplars=4, log_every=1)
    hist = fit(_crops(16), ModelConfig(input_size=64, memory=False), tcfg, lite0).report[
        "loss_history"
    ]
    first = np.mean([h["kd"] for h in hist[:3]])
    last = np.mean([h["kd"] for h in hist[-3:]])
    assert last < 0.7 * first, (first, last)


def test_schedule_and_holdout_arithmetic() -> None:
    assert TrainConfig(epochs=3, batch_size=16).total_steps(40) == 9
    assert TrainConfig(steps=5, epochs=3).total_steps(40) == 5
    assert TrainConfig(epochs=2, batch_size=16).total_steps(5) == 2  # batch shrinks to 5
    train, hold = holdout_split(60, TrainConfig())
    assert len(hold) == 9 and len(train) == 51 and not set(train) & set(hold)
    assert holdout_split(60, TrainConfig()) == (train, hold)  # seeded
    assert holdout_split(1, TrainConfig()) == ([0], [])
    assert len(holdout_split(10, TrainConfig())[1]) == 2
    assert holdout_split(10, TrainConfig(holdout_fraction=0.0))[1] == []

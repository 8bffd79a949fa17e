"""fit: seeded, held-out calibration, progress reporting, schedule arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from memkd.backbones import Teacher
from memkd.config import ModelConfig, TrainConfig
from memkd.precision import PrecisionError
from memkd.train import fit, holdout_split, stop_split
from PIL import Image
from skimage import data

from tests.support.models import LITE0


def _crops(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    brick = data.brick()
    out = []
    for _ in range(n):
        y, x = rng.integers(0, brick.shape[0] - 80, 2)
        out.append(Image.fromarray(brick[y : y + 80, x : x + 80]).convert("RGB"))
    return out


CFG = ModelConfig(backbone=LITE0, input_size=64, memory_items=8)


def test_fit_reports_progress_and_calibrates_on_held_out_images(lite0: Teacher) -> None:
    calls: list[tuple[int, int, dict[str, float]]] = []
    tcfg = TrainConfig(steps=4, batch_size=4, exemplars=3, holdout_fraction=0.25)
    res = fit(_crops(12), CFG, tcfg, lite0, progress=lambda s, t, d: calls.append((s, t, d)))
    assert [c[0] for c in calls] == [1, 2, 3, 4] and {c[1] for c in calls} == {4}
    assert set(calls[0][2]) == {"kd", "nm", "orth", "loss"}
    assert set(calls[-1][2]) == {"kd", "nm", "orth", "loss", "holdout_kd"}  # early stopping's check
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
    res = fit(_crops(6), ModelConfig(backbone=LITE0, input_size=64, memory_items=4), tcfg, lite0)
    assert res.report["precision"] == res.model.provenance["precision"] == "bf16"
    assert res.model.calibration is not None and np.isfinite(res.report["holdout_scores"]).all()
    assert {type(v) for v in res.report["final_losses"].values()} == {float}


def test_fp16_on_a_cpu_fails_before_any_work(lite0: Teacher) -> None:
    with pytest.raises(PrecisionError, match="fp16 needs a CUDA GPU"):
        fit([], CFG, TrainConfig(precision="fp16"), lite0)  # no images: it never got there


def test_loss_goes_down(lite0: Teacher) -> None:
    tcfg = TrainConfig(steps=30, batch_size=8, exemplars=4, log_every=1)
    hist = fit(
        _crops(16), ModelConfig(backbone=LITE0, input_size=64, memory=False), tcfg, lite0
    ).report["loss_history"]
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


def test_memory_from_data_starts_at_teacher_features(lite0: Teacher) -> None:
    """memory_init="data": before any step, every key and value is a teacher pixel feature of
    the memory's stage (stage 3 for the first memory, stage 2 for the second)."""
    imgs = _crops(8)
    tcfg = TrainConfig(steps=1, lr=1e-12, batch_size=4, exemplars=2, memory_init="data",
                       precision="fp32", holdout_fraction=0.0)  # fmt: skip
    student = fit(imgs, CFG, tcfg, lite0).model.student
    from memkd.train import load_batch

    with torch.no_grad():
        feats = lite0(load_batch(imgs, 64, lite0.mean, lite0.std))
    for memory, stage in zip(student.memory_list, (feats[2], feats[1]), strict=True):
        pixels = torch.nn.functional.normalize(
            stage.permute(0, 2, 3, 1).reshape(-1, stage.shape[1]), dim=1
        )
        keys = torch.nn.functional.normalize(memory.keys.detach(), dim=1)
        assert (keys @ pixels.t()).amax(dim=1).min() > 0.999  # each key is one of the pixels
        torch.testing.assert_close(memory.keys, memory.values)


def test_early_stopping_keeps_the_best_held_out_student(lite0: Teacher) -> None:
    tcfg = TrainConfig(steps=12, batch_size=4, exemplars=2, early_stopping=True, eval_every=3,
                       holdout_fraction=0.25, log_every=1, precision="fp32")  # fmt: skip
    res = fit(_crops(12), CFG, tcfg, lite0)
    checked = {h["step"]: h["holdout_kd"] for h in res.report["loss_history"] if "holdout_kd" in h}
    assert sorted(checked) == [3, 6, 9, 12]
    best = min(checked, key=lambda s: checked[s])
    assert res.report["best_step"] == best


def test_cosine_schedule_ends_near_zero_and_time_bound_stops_early(lite0: Teacher) -> None:
    seen: list[float] = []
    tcfg = TrainConfig(steps=5, batch_size=4, exemplars=2, lr_schedule="cosine")
    res = fit(_crops(8), CFG, tcfg, lite0)
    assert res.report["steps_run"] == 5 and res.report["stopped_by"] is None
    bounded = TrainConfig(steps=10_000, batch_size=4, exemplars=2, max_seconds=0.5)
    res = fit(_crops(8), CFG, bounded, lite0, progress=lambda s, t, d: seen.append(s))
    assert res.report["stopped_by"] == "max_seconds" and res.report["steps_run"] < 10_000
    assert res.model.calibration is not None


def test_memory_warmup_blends_the_recall_in(lite0: Teacher) -> None:
    gains: list[float] = []
    tcfg = TrainConfig(steps=10, batch_size=4, exemplars=2, memory_warmup=0.5)
    from memkd.network import MemKDStudent

    original = MemKDStudent._fuse

    def spy(self: MemKDStudent, s: torch.Tensor, k: int) -> torch.Tensor:
        if self.training and k == 0:
            gains.append(self.recall_gain)
        return original(self, s, k)

    MemKDStudent._fuse = spy  # type: ignore[method-assign]
    try:
        model = fit(_crops(8), CFG, tcfg, lite0).model
    finally:
        MemKDStudent._fuse = original  # type: ignore[method-assign]
    assert gains[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0]) and set(gains[5:]) == {1.0}
    assert model.student.recall_gain == 1.0


def test_the_accuracy_defaults_work_for_the_paper_teacher(wrn_random: Teacher) -> None:
    """WRN50's weights cannot be had here, so its accuracy is not measured; its code path is:
    memory from data, warm-up, cosine lr, early stopping, top-k score, the threshold rule."""
    tcfg = TrainConfig(steps=3, batch_size=2, exemplars=2, memory_init="data", memory_warmup=0.3,
                       lr_schedule="cosine", early_stopping=True, eval_every=1,
                       threshold_rule="lognormal", holdout_fraction=0.5)  # fmt: skip
    mcfg = ModelConfig(backbone="wide_resnet50_2", input_size=64, memory_items=4, score_topk=0.01)
    res = fit(_crops(6), mcfg, tcfg, wrn_random)
    cal = res.model.calibration
    assert cal is not None and cal.rule == "lognormal" and len(cal.scores) == 3
    assert res.report["best_step"] in (1, 2, 3)


def test_a_tiled_fit_trains_on_tiles_and_calibrates_on_frame_scores(lite0: Teacher) -> None:
    from memkd.tiling import Tiling, cut_tiles, frame_scores

    frames = _crops(6)  # 80 x 80: 64 px tiles at 0 and 16 -> 4 tiles per frame
    tiling = Tiling(64, 8)
    tcfg = TrainConfig(steps=2, batch_size=4, exemplars=2, holdout_fraction=0.34, min_holdout=2)
    res = fit(frames, CFG, tcfg, lite0, tiling=tiling)
    rep, model = res.report, res.model
    assert (rep["n_images"], rep["n_train"], rep["n_holdout"]) == (6, 4, 2)
    assert rep["n_train_inputs"] == 16 and model.provenance["n_train_tiles"] == 16
    assert model.tiling == tiling and model.calibration is not None
    # The held-out scores are frame scores: the max over each held-out frame's own tiles.
    _, held = holdout_split(6, tcfg)
    expected = []
    for i in held:
        tiles, _ = cut_tiles(frames[i], tiling, 64, lite0.mean, lite0.std)
        expected += frame_scores(model.score(lite0, tiles).scores, [len(tiles)])
    np.testing.assert_allclose(rep["holdout_scores"], expected, rtol=1e-4)


def test_stopping_apart_keeps_the_calibration_images_and_takes_its_own_from_training() -> None:
    """``stop_fraction``: the early-stopping images are disjoint from the calibration images,
    which stay exactly those of a fit without it; they come out of the training images."""
    cfg = TrainConfig(stop_fraction=0.1)
    train, hold = holdout_split(60, cfg)
    assert (train, hold) == holdout_split(60, TrainConfig())  # the same calibration images
    kept, stop = stop_split(train, 60, cfg)
    assert len(stop) == 6 and len(kept) == len(train) - 6
    assert set(kept) | set(stop) == set(train) and not set(stop) & (set(kept) | set(hold))
    assert stop_split(train, 60, cfg) == (kept, stop)  # seeded
    assert stop_split(train, 60, TrainConfig()) == (train, [])  # off by default
    assert stop_split(train, 60, TrainConfig(stop_fraction=0.1, early_stopping=False))[1] == []
    assert len(stop_split([0, 1, 2], 4, TrainConfig(stop_fraction=0.01))[1]) == 2  # at least 2
    assert stop_split([0, 1], 2, TrainConfig(stop_fraction=0.9)) == ([0], [1])  # one trains


def test_a_fit_that_stops_apart_reports_it(lite0: Teacher) -> None:
    tcfg = TrainConfig(steps=4, batch_size=4, eval_every=2, stop_fraction=0.2, seed=3)
    report = fit(_crops(10), ModelConfig(backbone=LITE0, input_size=64, memory_items=4), tcfg,
                 lite0).report  # fmt: skip
    assert report["n_stop"] == 2 and report["n_holdout"] == 2 and report["n_train"] == 6
    assert report["best_step"] in (2, 4)

"""Anomaly maps, the separable blur, calibration and the rendered mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from memkd.anomaly import (
    Calibration,
    anomaly_map,
    anomaly_result,
    gaussian_blur,
    render_mask,
)
from scipy.ndimage import gaussian_filter


def test_blur_matches_scipy_gaussian_filter_in_the_interior() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((2, 1, 96, 80)).astype(np.float32)
    maps[0, 0, 40:44, 30:33] += 5.0
    ours = gaussian_blur(torch.from_numpy(maps)).numpy()
    for b in range(2):
        ref = gaussian_filter(maps[b, 0].astype(np.float64), sigma=4)  # truncate 4 -> 33 taps
        np.testing.assert_allclose(ours[b, 0, 16:-16, 16:-16], ref[16:-16, 16:-16], atol=1e-5)
    assert ours.shape == maps.shape


def test_blur_keeps_a_constant_map_constant_everywhere() -> None:
    out = gaussian_blur(torch.full((1, 1, 40, 40), 0.7))
    torch.testing.assert_close(out, torch.full_like(out, 0.7))


def test_map_is_sum_over_scales_of_one_minus_cosine() -> None:
    t = [torch.ones(1, 2, 8, 8), torch.ones(1, 3, 4, 4), torch.ones(1, 4, 2, 2)]
    same = anomaly_map(t, t, 32)
    torch.testing.assert_close(same, torch.zeros(1, 1, 32, 32))
    s = [x.clone() for x in t]
    s[0][:, 0] = -1.0  # first scale: cos 0 everywhere -> 1
    s[1] = -s[1]  # second scale: cos -1 -> 2
    torch.testing.assert_close(anomaly_map(t, s, 32), torch.full((1, 1, 32, 32), 3.0))


def test_result_score_is_the_max_of_the_blurred_map() -> None:
    torch.manual_seed(0)
    t = [torch.randn(3, 4, 16, 16), torch.randn(3, 4, 8, 8), torch.randn(3, 4, 4, 4)]
    s = [torch.randn_like(x) for x in t]
    res = anomaly_result(t, s, 64)
    assert res.maps.shape == (3, 1, 64, 64) and res.maps.dtype == torch.float32
    torch.testing.assert_close(res.maps, gaussian_blur(anomaly_map(t, s, 64)))
    torch.testing.assert_close(res.scores, res.maps.amax(dim=(1, 2, 3)))


def test_calibration_rules_and_round_trip() -> None:
    scores = np.linspace(1.0, 2.0, 101)
    c = Calibration.from_scores(scores)
    assert c.rule == "mean_std" and c.n == 101
    assert c.threshold == pytest.approx(scores.mean() + 3 * scores.std(ddof=1))
    q = Calibration.from_scores(scores, rule="quantile", q=0.9)
    assert q.threshold == pytest.approx(1.9)
    assert Calibration.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError):
        Calibration.from_scores([])
    with pytest.raises(ValueError):
        Calibration.from_scores([1.0, float("nan")])


def test_render_mask_puts_the_threshold_at_128() -> None:
    thr = 0.5
    m = torch.tensor([[0.0, 0.5, 1.0, 7.0], [-1.0, 0.25, 0.75, 0.999]])
    out = render_mask(m, thr)
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 128, 255, 255], [0, 64, 191, 255]]
    assert render_mask(m.numpy()[None], thr).tolist() == out.tolist()  # [1, H, W] accepted
    with pytest.raises(ValueError):
        render_mask(m, 0.0)
    with pytest.raises(ValueError):
        render_mask(torch.zeros(2, 3, 3), thr)


def test_topk_score_is_the_mean_of_the_highest_pixels() -> None:
    from memkd.anomaly import image_scores

    maps = torch.zeros(2, 1, 10, 10)
    maps[0, 0, 0, :5] = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    maps[1, 0, 3, 3] = 9.0
    torch.testing.assert_close(image_scores(maps), torch.tensor([5.0, 9.0]))
    torch.testing.assert_close(image_scores(maps, 0.03), torch.tensor([4.0, 3.0]))  # 3 pixels
    torch.testing.assert_close(image_scores(maps, 0.001), torch.tensor([5.0, 9.0]))  # >= 1


def test_more_good_scores_join_the_evidence_and_reset_the_threshold() -> None:
    rng = np.random.default_rng(0)
    held_out = np.exp(rng.normal(0.0, 0.2, 9))
    old = Calibration.from_scores(held_out, rule="lognormal_fit", target_fpr=0.01)
    more = np.exp(rng.normal(0.0, 0.2, 200))
    new = old.with_more_good(more)
    assert new.n == 209 and new.scores[:9] == old.scores  # the held-out scores stay evidence
    assert new.rule == "lognormal_fit" and new.target_fpr == 0.01  # the calibration's own
    # 209 log-normal scores put the 1 % threshold near the true quantile exp(2.326 * 0.2)
    assert abs(np.log(new.threshold) - 2.326 * 0.2) < 0.1
    assert old.with_more_good(more, target_fpr=0.05).threshold < new.threshold
    with pytest.raises(ValueError, match="no good-image scores"):
        old.with_more_good([])

"""Threshold rules: the prediction bounds keep the false-alarm rate they promise."""

from __future__ import annotations

import math

import numpy as np
import pytest
from memkd.anomaly import Calibration
from memkd.threshold import best_f1_threshold, expected_fpr, threshold_for


def test_the_lognormal_bound_holds_its_rate_averaged_over_held_out_samples() -> None:
    """The promise (memkd.threshold): over the samples a line could draw, a new good score
    exceeds the bound with the target probability. Log-normal good scores, n = 9."""
    rng = np.random.default_rng(0)
    rates = []
    for _ in range(4000):
        held_out = rng.lognormal(0.0, 0.3, size=9)
        thr = threshold_for(held_out, "lognormal", 0.05)
        rates.append(1.0 - _lognormal_cdf(thr, 0.0, 0.3))
    assert np.mean(rates) == pytest.approx(0.05, abs=0.004)


def test_the_normal_bound_is_wider_than_the_plug_in_quantile_with_few_scores() -> None:
    scores = np.array([1.0, 1.2, 0.9, 1.1, 1.05])
    plug_in = scores.mean() + 2.326 * scores.std(ddof=1)
    assert threshold_for(scores, "normal", 0.01) > plug_in


def test_expected_fpr_inverts_the_bound() -> None:
    scores = np.random.default_rng(1).lognormal(0, 0.4, 20)
    for rule in ("lognormal", "normal"):
        for target in (0.01, 0.05, 0.2):
            thr = threshold_for(scores, rule, target)
            assert expected_fpr(scores, thr, rule) == pytest.approx(target, rel=1e-6)


def test_few_scores_fall_back_to_the_maximum() -> None:
    assert threshold_for([0.3, 0.5], "lognormal", 0.01) == 0.5
    assert expected_fpr([0.3, 0.5], 0.5, "lognormal") == pytest.approx(1 / 3)


def test_legacy_rules_are_unchanged() -> None:
    scores = np.linspace(1.0, 2.0, 101)
    assert threshold_for(scores, "mean_std", k=3) == pytest.approx(
        scores.mean() + 3 * scores.std(ddof=1)
    )
    assert threshold_for(scores, "quantile", q=0.9) == pytest.approx(1.9)
    with pytest.raises(ValueError, match="unknown threshold rule"):
        threshold_for(scores, "median")
    with pytest.raises(ValueError, match="target_fpr"):
        threshold_for(scores, "lognormal", 0.0)


def test_best_f1_separates_clean_classes_midway() -> None:
    cut, f1, recall = best_f1_threshold([1.0, 1.1, 1.2], [2.0, 2.2])
    assert cut == pytest.approx(1.6) and f1 == 1.0 and recall == 1.0
    cut, f1, recall = best_f1_threshold([1.0, 1.5], [1.2, 2.0])  # overlapping
    assert 0 < f1 < 1 and recall in (0.5, 1.0)


def test_a_calibration_keeps_its_evidence_and_moves_to_another_rate() -> None:
    scores = np.random.default_rng(2).lognormal(0, 0.3, 12)
    c = Calibration.from_scores(scores, "lognormal", target_fpr=0.01)
    assert c.target_fpr == 0.01 and c.expected_fpr == pytest.approx(0.01)
    assert len(c.scores) == 12
    looser = c.retarget(0.05)
    assert looser.threshold < c.threshold and looser.expected_fpr == pytest.approx(0.05)
    manual = c.with_threshold(c.threshold * 2)
    assert manual.rule == "manual" and manual.expected_fpr is not None
    assert manual.expected_fpr < 0.01
    assert Calibration.from_dict(c.to_dict()) == c


def test_defective_examples_give_a_miss_rate_and_a_best_f1_threshold() -> None:
    c = Calibration.from_scores([1.0, 1.1, 0.9, 1.05, 0.95], "lognormal", target_fpr=0.05)
    with_bad = c.with_defects([0.8, 3.0, 4.0, 5.0])
    assert with_bad.defects is not None
    assert with_bad.defects["miss_rate"] == pytest.approx(0.25)
    assert with_bad.defects["best_f1_threshold"] > 1.1


def test_a_first_wave_calibration_still_loads_and_unknown_fields_are_ignored() -> None:
    old = {"threshold": 1.0, "mean": 0.5, "std": 0.1, "quantile": 0.8, "n": 7,
           "rule": "mean_std", "k": 3.0, "q": 0.99, "max": 0.9}  # fmt: skip
    c = Calibration.from_dict(old | {"from_the_future": 1})
    assert c.threshold == 1.0 and c.scores == ()
    with pytest.raises(ValueError, match="does not keep its held-out scores"):
        c.retarget(0.05)


def _lognormal_cdf(x: float, mu: float, sigma: float) -> float:
    return 0.5 * (1 + math.erf((math.log(x) - mu) / (sigma * math.sqrt(2))))


def test_the_fitted_lognormal_quantile_sits_below_the_bound_and_predicts_its_own_target() -> None:
    scores = np.random.default_rng(3).lognormal(0.0, 0.3, 9)
    fitted = threshold_for(scores, "lognormal_fit", 0.01)
    assert fitted < threshold_for(scores, "lognormal", 0.01)
    assert expected_fpr(scores, fitted, "lognormal_fit") == pytest.approx(0.01, rel=1e-6)
    logs = np.log(scores)
    assert fitted == pytest.approx(math.exp(logs.mean() + 2.3263479 * logs.std(ddof=1)), rel=1e-6)

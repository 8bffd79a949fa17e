"""The activation gate's figures and decision (pure: scores in, verdict out)."""

from __future__ import annotations

import pytest
from memkd.gate import decide, figures


def test_figures_at_a_threshold() -> None:
    fig = figures([0.1, 0.2, 0.3, 0.9], [0.8, 0.95, 0.2], threshold=0.5)
    assert (fig.n_good, fig.n_bad) == (4, 3)
    assert fig.false_alarm_rate == 0.25 and fig.miss_rate == pytest.approx(1 / 3)
    assert fig.balanced_accuracy == pytest.approx(1 - (0.25 + 1 / 3) / 2)
    assert fig.image_auroc == pytest.approx(8.5 / 12)  # a tie counts a half
    good_only = figures([0.1, 0.6], [], threshold=0.5)
    assert good_only.false_alarm_rate == 0.5
    assert good_only.miss_rate is None and good_only.image_auroc is None


def test_with_defects_a_lower_auroc_beyond_the_margin_fails() -> None:
    old = figures([0.1, 0.2, 0.3], [0.8, 0.9], 0.5)  # perfect
    new = figures([0.1, 0.85, 0.3], [0.8, 0.9], 0.5)  # one good image above a defect
    decision = decide(new, old, margin=0.02)
    assert not decision.passed
    assert any(r.startswith("image AUROC") for r in decision.reasons)
    assert decide(old, new, margin=0.02).passed  # better is never refused


def test_with_defects_worse_verdicts_at_its_own_threshold_fail() -> None:
    old = figures([0.1, 0.2, 0.3, 0.4], [0.8, 0.9], 0.5)
    same_ranking_higher_threshold = figures([0.1, 0.2, 0.3, 0.4], [0.8, 0.9], 0.85)
    decision = decide(same_ranking_higher_threshold, old, margin=0.02)
    assert not decision.passed
    assert [r.split(" 0")[0] for r in decision.reasons] == ["balanced accuracy"]


def test_good_only_compares_false_alarms_within_the_margin() -> None:
    old = figures([0.1] * 19 + [0.6], [], 0.5)  # 5 %
    assert decide(figures([0.1] * 19 + [0.6], [], 0.5), old, margin=0.0).passed
    two = figures([0.1] * 18 + [0.6] * 2, [], 0.5)  # 10 %
    assert decide(two, old, margin=0.06).passed
    refused = decide(two, old, margin=0.02)
    assert not refused.passed
    assert "false alarms on good images 10.0 % vs 5.0 %" in refused.reasons[0]
    assert refused.to_dict()["candidate"]["false_alarm_rate"] == 0.1


def test_no_images_or_different_sets_cannot_be_decided() -> None:
    with pytest.raises(ValueError, match="good images"):
        decide(figures([], [0.5], 0.5), figures([], [0.5], 0.5))
    with pytest.raises(ValueError, match="same images"):
        decide(figures([0.1], [], 0.5), figures([0.1, 0.2], [], 0.5))
    with pytest.raises(ValueError, match="margin"):
        decide(figures([0.1], [], 0.5), figures([0.1], [], 0.5), margin=1.5)

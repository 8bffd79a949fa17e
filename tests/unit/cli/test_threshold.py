"""lines threshold's pure part: which calibration a --value or --target-fpr makes."""

from __future__ import annotations

from argparse import Namespace
from dataclasses import replace

import pytest
from memkd.anomaly import Calibration

from memkd_stream.cli.main import UsageError
from memkd_stream.cli.threshold import _moved

SCORES = [1.0, 1.1, 0.9, 1.05, 0.95, 1.02, 0.98, 1.2]


def test_target_fpr_moves_the_threshold_with_the_stored_held_out_scores() -> None:
    old = Calibration.from_scores(SCORES, rule="lognormal", target_fpr=0.01)
    args = Namespace(value=None, target_fpr=0.1, rule=None)
    new = _moved(old, args, "A@3")
    assert new.threshold < old.threshold and new.target_fpr == 0.1
    assert new.scores == old.scores  # the same evidence travels on
    assert _moved(old, Namespace(value=2.5, target_fpr=None, rule=None), "A@3").threshold == 2.5


def test_a_calibration_without_held_out_scores_refuses_target_fpr_but_takes_a_value() -> None:
    old = replace(Calibration.from_scores(SCORES), scores=())
    with pytest.raises(UsageError, match=r"--target-fpr has nothing to work from.*--value X"):
        _moved(old, Namespace(value=None, target_fpr=0.01, rule=None), "A@3")
    assert _moved(old, Namespace(value=1.5, target_fpr=None, rule=None), "A@3").threshold == 1.5

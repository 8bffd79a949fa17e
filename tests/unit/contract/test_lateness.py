"""Late images (DESIGN.md §3): the age rule with its clock-skew margin, and late_ms in results."""

from __future__ import annotations

import json

import pytest

from memkd_stream.contract.lateness import LatePolicy, late_ms
from memkd_stream.contract.request import parse_request
from memkd_stream.contract.result import encode_result


@pytest.mark.parametrize(
    ("age_ms", "expected"),
    [
        (0.0, None),
        (5_000.0, None),  # exactly the maximum age
        (5_900.0, None),  # within the clock-skew margin
        (6_000.0, None),  # at the margin: not yet late
        (6_500.0, 1_500.0),  # late_ms counts from the maximum age, not from the margin
        (-30_000.0, None),  # a sender clock ahead of ours: never late
    ],
)
def test_late_only_beyond_max_age_plus_skew(age_ms: float, expected: float | None) -> None:
    now = 1_700_000_000.0
    got = late_ms(now - age_ms / 1000.0, now, max_age_ms=5_000, clock_skew_ms=1_000)
    assert got == (None if expected is None else pytest.approx(expected))


def test_policy_values_are_the_words_operators_type() -> None:
    assert [p.value for p in LatePolicy] == ["score", "dead-letter"]


def _encoded(late: float | None) -> dict:
    request = parse_request("memkd.inspect", 0, 1, b"A", b"img", [], received_at=100.0)
    raw = encode_result(
        request,
        model_version="A@1",
        score=0.5,
        threshold=0.6,
        image_hw=(8, 8),
        mask_png=b"png",
        mask_hw=(4, 4),
        timing_ms={"queue": 1.0, "infer": 2.0, "total": 3.0},
        worker="w",
        late_ms=late,
    )
    return json.loads(raw)


def test_late_ms_is_in_the_result_only_when_late() -> None:
    assert "late_ms" not in _encoded(None)
    late = _encoded(1234.56789)
    assert late["late_ms"] == 1234.568
    assert list(late)[-1] == "late_ms"  # additive: every other key keeps its place
    with pytest.raises(ValueError, match="late_ms"):
        _encoded(float("nan"))

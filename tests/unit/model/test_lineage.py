"""lineage: what a record says about deltas, parents and shared inputs (no tensors needed)."""

from __future__ import annotations

import pytest
from memkd.lineage import (
    DELTA_KIND,
    FULL_KIND,
    ParentRef,
    delta_tensor_names,
    input_differences,
    is_delta,
    parent_of,
    weight_differences,
)

SHA = "ab" * 32
BASE = {
    "kind": FULL_KIND,
    "model": {"backbone": "tf_efficientnet_lite0", "input_size": 64},
    "widths": {"dec1_out": 112},
    "teacher": {"name": "tf_efficientnet_lite0", "fingerprint": "f1"},
    "input_size": 64,
    "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3},
    "roi": None,
}


def test_a_full_record_has_no_parent_and_replaces_nothing() -> None:
    assert not is_delta(BASE) and parent_of(BASE) is None and delta_tensor_names(BASE) == ()


def test_a_delta_names_its_parent_and_tensors() -> None:
    delta = {**BASE, "kind": DELTA_KIND, "parent": {"sha256": SHA.upper(), "version": 3,
             "line": "A"}, "tensors": ["memories.0.keys"]}  # fmt: skip
    assert is_delta(delta)
    assert parent_of(delta) == ParentRef(SHA, 3, "A")  # the digest is normalised to lower case
    assert delta_tensor_names(delta) == ("memories.0.keys",)
    assert ParentRef.from_dict(ParentRef(SHA, 3, "A").to_dict()) == ParentRef(SHA, 3, "A")


def test_a_delta_without_a_parent_or_with_a_bad_digest_is_refused() -> None:
    with pytest.raises(ValueError, match="does not name its parent"):
        parent_of({**BASE, "kind": DELTA_KIND})
    with pytest.raises(ValueError, match="64 hex digits"):
        ParentRef("not-a-digest")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"teacher": {"name": "wide_resnet50_2", "fingerprint": "f1"}}, "backbone"),
        ({"teacher": {"name": "tf_efficientnet_lite0", "fingerprint": "other"}}, "backbone"),
        ({"input_size": 128}, "input size"),
        ({"normalization": {"mean": [0.4] * 3, "std": [0.5] * 3}}, "normalisation"),
        ({"roi": [0, 0, 10, 10]}, "region of interest"),
    ],
)
def test_input_differences_name_what_keeps_features_apart(change: dict, named: str) -> None:
    assert input_differences(BASE, dict(BASE)) == []
    (difference,) = input_differences(BASE, {**BASE, **change})
    assert difference.startswith(named)


def test_weight_differences_also_cover_the_network() -> None:
    other = {**BASE, "model": {**BASE["model"], "memory_items": 8}, "widths": {"dec1_out": 1}}
    assert [d.split()[0] for d in weight_differences(BASE, other)] == ["network", "widths"]
    assert weight_differences(BASE, {**BASE, "calibration": {"threshold": 2.0}}) == []


def test_the_image_score_is_not_a_weight_difference() -> None:
    """A delta records its whole model config; a parent written before ``score_topk`` existed
    does not name it. The score is how a map becomes a number, not a tensor."""
    scored = {**BASE, "model": {**BASE["model"], "score_topk": 0.01}}
    assert weight_differences(scored, BASE) == []
    assert input_differences(scored, BASE) == []

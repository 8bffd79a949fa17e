"""The activation gate's pure parts as the commands use them: the held-back slice, exit codes,
and the side-by-side figures."""

from __future__ import annotations

import io
from pathlib import Path

from memkd.gate import decide, figures
from rich.console import Console

from memkd_stream.cli.gate import GateOutcome, hold_back, print_gate
from memkd_stream.errors import ExitCode
from memkd_stream.lines.activation import ActivationReason

IMAGES = [Path(f"{i:03d}.png") for i in range(40)]


def test_a_seeded_slice_is_held_back_and_never_trained_on() -> None:
    train, held = hold_back(IMAGES, fraction=0.15, at_least=4, keep=8, seed=0)
    assert len(held) == 6 and len(train) == 34
    assert not set(train) & set(held) and sorted(train + held) == IMAGES
    assert hold_back(IMAGES, 0.15, 4, 8, seed=0) == (train, held)  # seeded
    assert hold_back(IMAGES, 0.15, 4, 8, seed=1)[1] != held
    assert len(hold_back(IMAGES[:20], 0.15, 4, 8, seed=0)[1]) == 4  # at least 4


def test_nothing_is_held_back_when_too_few_would_be_left_to_train() -> None:
    assert hold_back(IMAGES[:10], 0.15, 4, keep=8, seed=0) == (IMAGES[:10], [])


def test_exit_status_tells_refused_from_done() -> None:
    refused = GateOutcome("A", 8, 7, activated=False, reason=None, why_not="AUROC lower")
    assert refused.exit_code == ExitCode.NOT_ACTIVATED == 5
    forced = GateOutcome("A", 8, 7, True, ActivationReason.FORCED, why_not="AUROC lower")
    assert forced.exit_code == ExitCode.OK
    asked_not_to = GateOutcome("A", 8, 7, activated=False, reason=None)
    assert asked_not_to.exit_code == ExitCode.OK
    assert forced.to_dict()["reason"] == "forced"


def test_both_versions_figures_are_printed_side_by_side_with_the_reason() -> None:
    decision = decide(figures([0.1, 0.9], [0.8], 0.5), figures([0.1, 0.2], [0.8], 0.5))
    outcome = GateOutcome("A", 8, 7, False, None, decision, {"source": "test split of d"},
                          why_not="; ".join(decision.reasons))  # fmt: skip
    buffer = io.StringIO()
    print_gate(Console(file=buffer, width=200), outcome.to_dict(), "A")
    text = buffer.getvalue()
    assert "gate: A@8 (new) vs A@7 (active) on 2 good + 1 defective images" in text
    assert "image AUROC" in text and "0.500" in text and "1.000" in text
    assert "A@8 published but NOT activated: image AUROC 0.500 vs 1.000" in text
    assert "memkd-stream lines activate A 8" in text

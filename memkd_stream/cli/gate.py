"""The activation gate as the commands run it: which images, compare, activate or say why not.

``fit`` (full or ``--memory-only``), ``lines publish`` and ``lines threshold`` publish the new
version first, without activating it; the gate then scores it and the active version on the
same images (``memkd.gate``: figures and rule) and activates only if the new one is not worse
by more than ``gate.margin``. Otherwise the version stays published, both sets of figures and
the reason are printed and stored with it (meta ``notes.gate``), and the command exits
``ExitCode.NOT_ACTIVATED`` (5). ``--force`` activates anyway (history reason ``forced``).

Which images (a choice: the new fit's own held-out slice sets its threshold, so its false-alarm
rate there would be flattered, and the active version may have trained on any image of the
line's data), in this order:

1. ``--gate-data DIR``: a folder of good images, or a category's labelled test split;
2. the labelled test split of ``fit --data`` (a fit trains on ``train/good`` only);
3. a seeded slice of the new good images held back from training altogether
   (``gate.holdout_fraction``, at least ``gate.min_images``): the new version never sees them,
   not even to calibrate;
4. ``lines threshold``: the held-out scores its calibration stores (same weights, so both
   versions score them alike, and the fit that made the weights held them out).

Images that either version records as trained on (``provenance.trained_on``, content hashes)
are left out. An active version fitted before that was recorded may have trained on some: that
can only flatter it (it scores its own training images low), so the gate then errs towards
keeping it, never towards a worse model; the output says when overlap could not be checked.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from memkd_stream.cli.output import Output
from memkd_stream.errors import ExitCode
from memkd_stream.lines.activation import ActivationReason

if TYPE_CHECKING:
    from memkd.gate import GateDecision
    from memkd.line_model import LineModel
    from memkd.precision import Precision

    from memkd_stream.cli.inputs import DatasetInput
    from memkd_stream.cli.main import Context
    from memkd_stream.cli.stored_models import Teachers
    from memkd_stream.lines.store import LineStore

__all__ = [
    "GateImages",
    "GateOutcome",
    "compare_with_active",
    "figure_rows",
    "gate_images",
    "gate_new_version",
    "hold_back",
    "plan_images",
    "print_gate",
    "settle",
]


@dataclass
class GateImages:
    """The images both versions are scored on, and where they came from."""

    good: list[Path]
    bad: list[Path]
    source: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"n_good": len(self.good), "n_bad": len(self.bad), "source": self.source,
                "notes": list(self.notes)}  # fmt: skip


@dataclass
class GateOutcome:
    """What the gate did with a published version."""

    line: str
    version: int
    incumbent: int | None
    activated: bool
    reason: ActivationReason | None
    decision: GateDecision | None = None
    images: dict[str, Any] | None = None
    why_not: str | None = None

    @property
    def exit_code(self) -> int:
        refused = not self.activated and self.why_not is not None
        return int(ExitCode.NOT_ACTIVATED if refused else ExitCode.OK)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "compared_with": self.incumbent,
            "activated": self.activated,
            "reason": str(self.reason) if self.reason else None,
            "why_not": self.why_not,
            "images": self.images,
            "decision": self.decision.to_dict() if self.decision else None,
        }


def gate_images(folder: Path) -> GateImages:
    """``--gate-data``: a category's labelled test split, or a folder of good images."""
    from memkd_stream.cli.inputs import DatasetError, resolve_dataset

    dataset = resolve_dataset(folder)
    if dataset.kind == "mvtec":
        if not dataset.has_labels:
            raise DatasetError(f"--gate-data {folder}: the category has no test images")
        test = dataset.category.test
        return GateImages(
            [Path(t.path) for t in test if t.label == 0],
            [Path(t.path) for t in test if t.label == 1],
            f"test split of {folder}",
        )
    return GateImages(list(dataset.train), [], f"good images of {folder}")


def hold_back(
    images: list[Path], fraction: float, at_least: int, keep: int, seed: int
) -> tuple[list[Path], list[Path]]:
    """(images to train on, images held back for the gate): a seeded slice, or none when fewer
    than ``keep`` would be left to train on."""
    count = max(round(fraction * len(images)), at_least)
    if len(images) - count < keep:
        return images, []
    order = list(range(len(images)))
    random.Random(seed + 104_729).shuffle(order)
    held = set(order[:count])
    return (
        [p for i, p in enumerate(images) if i not in held],
        [p for i, p in enumerate(images) if i in held],
    )


def plan_images(
    ctx: Context, dataset: DatasetInput, incumbent: int | None
) -> tuple[GateImages | None, list[Path]]:
    """The gate's images for a fit on ``dataset`` (module docstring, 1-3) and the good images
    left to train on. Nothing when no version is active; no slice is held back with --force."""
    args, settings = ctx.args, ctx.settings.gate
    if incumbent is None:
        return None, dataset.train
    if args.gate_data is not None:
        return gate_images(args.gate_data), dataset.train
    if dataset.has_labels:
        test = dataset.category.test
        good = [Path(t.path) for t in test if t.label == 0]
        bad = [Path(t.path) for t in test if t.label == 1]
        return GateImages(good, bad, f"test split of {dataset.root}"), dataset.train
    if args.force:
        return None, dataset.train
    train, held = hold_back(
        dataset.train, settings.holdout_fraction, settings.min_images, args.min_images, args.seed
    )
    if not held:
        note = f"too few good images to hold {settings.min_images} back from training"
        return GateImages([], [], "none", [note]), train
    return GateImages(held, [], f"{len(held)} new good images held back from training"), train


def gate_new_version(
    ctx: Context,
    store: LineStore,
    version: int,
    incumbent: int | None,
    candidate: LineModel,
    teachers: Teachers,
    images: GateImages | None,
    precision: Precision,
) -> GateOutcome:
    """Compare the published ``version`` (``candidate``) with ``incumbent`` and ``settle``."""
    from memkd_stream.cli.stored_models import stored_model

    line = ctx.args.line
    decision = None
    if incumbent is not None and images is not None and images.good:
        active = stored_model(store, line, incumbent, teachers)
        ctx.out.note(f"comparing {line}@{version} with the active {active.ref} ({images.source})")
        margin = ctx.settings.gate.margin
        decision = compare_with_active(candidate, active.model, teachers, images, margin, precision)
    return settle(ctx, store, line, version, incumbent, decision, images, force=ctx.args.force)


def compare_with_active(
    candidate: LineModel,
    incumbent_model: LineModel,
    teachers: Teachers,
    images: GateImages,
    margin: float,
    precision: Precision,
) -> GateDecision | None:
    """Score both versions on ``images`` minus what either trained on; None when no good image
    is left (the reason is added to ``images.notes``)."""
    from memkd.gate import compare_versions

    from memkd_stream.cli.inputs import check_readable
    from memkd_stream.cli.stored_models import fingerprints

    def trained_on(model: LineModel) -> set[str] | None:
        recorded = model.provenance.get("trained_on")
        return set(recorded) if recorded is not None else None

    seen_new, seen_old = trained_on(candidate), trained_on(incumbent_model)
    if seen_old is None:
        images.notes.append(
            "the active version does not record what it trained on: if it trained on some of "
            "these images, the comparison favours it"
        )
    excluded = (seen_new or set()) | (seen_old or set())
    kept: dict[str, list[Path]] = {}
    for kind, paths in (("good", images.good), ("bad", images.bad)):
        readable = paths
        for roi in {candidate.roi, incumbent_model.roi}:
            readable, _ = check_readable(readable, roi)
        kept[kind] = [p for p, f in zip(readable, fingerprints(readable), strict=True)
                      if f not in excluded]  # fmt: skip
    dropped = len(images.good) + len(images.bad) - len(kept["good"]) - len(kept["bad"])
    if dropped:
        images.notes.append(f"{dropped} image(s) left out (unreadable, or trained on)")
    images.good, images.bad = kept["good"], kept["bad"]
    if not images.good:
        images.notes.append("no good image left to compare on")
        return None
    pair = (teachers.for_record(candidate.record()), teachers.for_record(incumbent_model.record()))
    return compare_versions(
        candidate, incumbent_model, images.good, images.bad, pair, margin, precision
    )


def settle(
    ctx: Context,
    store: LineStore,
    line: str,
    version: int,
    incumbent: int | None,
    decision: GateDecision | None,
    images: GateImages | None,
    *,
    force: bool,
) -> GateOutcome:
    """Activate ``line@version`` if there is nothing to compare with, if the gate passed, or if
    forced; store the figures with it either way; say why not otherwise."""
    outcome = GateOutcome(line, version, incumbent, False, None, decision,
                          images.to_dict() if images else None)  # fmt: skip
    if incumbent is None:
        outcome.reason = ActivationReason.FIRST_VERSION
    elif decision is not None and decision.passed:
        outcome.reason = ActivationReason.GATE_PASSED
    else:
        outcome.why_not = (
            "; ".join(decision.reasons)
            if decision is not None
            else "it could not be compared with the active version ("
            + ("; ".join(images.notes) if images and images.notes else "no images to compare on")
            + "): pass --gate-data DIR with images neither version trained on"
        )
        if force:
            outcome.reason = ActivationReason.FORCED
    if incumbent is not None:
        store.annotate(line, version, {"gate": outcome.to_dict()})
    if outcome.reason is not None:
        store.activate(line, version, who=ctx.who, action="publish", reason=outcome.reason,
                       expect_current=incumbent)  # fmt: skip
        outcome.activated = True
    return outcome


def print_gate(console: Console, gate: dict[str, Any], line: str) -> None:
    """Both versions' figures side by side, and what was done."""
    new, old = f"{line}@{gate['version']}", f"{line}@{gate['compared_with']}"
    decision, images = gate.get("decision"), gate.get("images") or {}
    if decision:
        counts = decision["candidate"]
        console.print(
            f"gate: {new} (new) vs {old} (active) on {counts['n_good']} good + "
            f"{counts['n_bad']} defective images ({images.get('source')})"
        )
        console.print(Output.table(["", new, old], figure_rows(decision)))
    for note in images.get("notes") or []:
        console.print(f"  note: {note}")
    if gate["activated"]:
        reason = gate["reason"]
        detail = f", margin {decision['margin']:g}" if decision and reason == "gate-passed" else ""
        console.print(f"{new} activated ({reason}{detail})")
    elif gate.get("why_not"):
        console.print(
            f"{new} published but NOT activated: {gate['why_not']}. {old} stays active; "
            f"`memkd-stream lines activate {line} {gate['version']}` (or --force) activates it"
        )


def figure_rows(decision: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows (figure, new, active) of a stored gate decision."""
    names = (
        ("image AUROC", "image_auroc", _num),
        ("balanced accuracy", "balanced_accuracy", _num),
        ("false alarms (good images)", "false_alarm_rate", _pct),
        ("missed defects", "miss_rate", _pct),
        ("threshold", "threshold", lambda v: f"{v:.4g}"),
    )
    new, old = decision["candidate"], decision["incumbent"]
    return [
        (label, fmt(new[key]), fmt(old[key]))
        for label, key, fmt in names
        if new.get(key) is not None or old.get(key) is not None
    ]


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"

"""``memkd-stream lines threshold A (--value X | --target-fpr F | --good DIR)``: move a threshold,
no retraining.

The new version reuses the active version's weights: it is a delta of the same full parent
(``memkd.delta.save_recalibrated``: the active version's own delta tensors, none when it is
full, and the new calibration), so even a WRN50 line moves a few KiB and nothing is downloaded
to make it. ``--target-fpr`` moves the threshold to another expected false-alarm rate with the
calibration's rule and the held-out scores it stores (``Calibration.retarget``); a calibration
that does not store them is refused with a clear message (``--value`` still works). ``--good``
adds evidence: the folder's good images, scored with the active version, join the stored scores
and the rule sets the threshold again (``Calibration.with_more_good``); a fit holds out a
handful, which rarely holds a target rate within 2x. The new version is then published and
passes the activation gate like any version (``cli.gate``): without ``--gate-data`` both
thresholds are judged on the good scores the calibration stores (held out by the fit, plus
``--good``'s; the two versions share weights, so they score them alike). A move that raises the
false-alarm rate by more than ``gate.margin`` is refused there like any worse version:
``--force`` is the operator saying it is meant.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from memkd_stream.cli.gate import GateImages, gate_images, print_gate, settle
from memkd_stream.cli.inputs import resolve_dataset, torch_device, torch_precision
from memkd_stream.cli.main import Context, UsageError
from memkd_stream.cli.stored_models import Teachers, stored_model

__all__ = ["good_hashes", "move_threshold"]

# Content hashes of the images --good added, kept in the version's provenance: 64 bits each is
# plenty to tell a camera's images apart, and a few hundred stay a few KiB of metadata.
_HASH_CHARS = 16
# Below this many good-image scores the default rule's 1 % / 5 % thresholds often miss their
# target by more than 2x (model/README.md, "Thresholds with more good images").
_ENOUGH_GOOD = 50


def move_threshold(ctx: Context) -> int:
    """The ``lines threshold`` command (see the module docstring)."""
    from memkd.anomaly import Calibration
    from memkd.artifact import read_artifact
    from memkd.delta import save_recalibrated
    from memkd.lineage import ParentRef, is_delta

    args = ctx.args
    if args.value is None and args.target_fpr is None and args.good is None:
        raise UsageError("say how to move the threshold: --value X, --target-fpr F or --good DIR")
    if args.value is not None and (args.good is not None or args.rule is not None):
        raise UsageError("--value sets the threshold itself; it cannot go with --good or --rule")
    store, line = ctx.store(), args.line
    active = store.current(line)
    if active is None:
        store.versions(line)  # an unknown line says so
        raise UsageError(f"line {line} has no active version whose threshold could move")
    meta = store.meta(line, active)
    record = meta["metadata"]
    if not record.get("calibration"):
        raise UsageError(f"{line}@{active} has no calibration to move")
    old = Calibration.from_dict(record["calibration"])
    counted = good_hashes(record)
    if args.good is not None:
        new, counted = _with_more_good(ctx, active, old, counted)
    else:
        new = _moved(old, args, f"{line}@{active}")
    tensors: dict[str, Any] = {}
    full = ParentRef(meta["sha256"], active, line)
    if is_delta(record):
        tensors, _ = read_artifact(store.fetch_artifact(line, active), meta["sha256"])
        full = ParentRef(store.meta(line, meta["parent"])["sha256"], meta["parent"], line)
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    path = args.out or Path(f"{line}-{stamp}-threshold.safetensors")
    change = {"from_version": active, "from": old.threshold, "to": new.threshold,
              "rule": new.rule, "target_fpr": new.target_fpr, "by": ctx.who,
              "good_sha256": counted}  # fmt: skip
    save_recalibrated(path, record, tensors, new, full, change)
    version = store.publish(line, path, activate=False, who=ctx.who)

    images, decision = _compare(ctx, active, old, new)
    outcome = settle(ctx, store, line, version, active, decision, images, force=args.force)
    data = {
        "line": line,
        "version": version,
        "artifact": str(path),
        "from_version": active,
        "threshold": {"from": old.threshold, "to": new.threshold},
        "rule": new.rule,
        "expected_fpr": {"from": old.expected_fpr, "to": new.expected_fpr},
        "good_scores": {"from": len(old.scores), "to": len(new.scores)},
        "gate": outcome.to_dict(),
    }
    ctx.out.result(data, lambda console: _print(console, data))
    return outcome.exit_code


def _moved(old: Any, args: Any, ref: str) -> Any:
    if args.value is not None:
        return old.with_threshold(args.value)
    if not old.scores:
        raise UsageError(
            f"{ref}'s calibration does not store the held-out scores it was set from (it was "
            "fitted before they were kept), so --target-fpr has nothing to work from: set the "
            "threshold with --value X, or refit the line"
        )
    return old.retarget(args.target_fpr, args.rule)


def _with_more_good(
    ctx: Context, active: int, old: Any, counted: list[str]
) -> tuple[Any, list[str]]:
    """The calibration with ``--good``'s images scored by the active version as more evidence,
    and the content hashes of every image counted so far (``counted``: the earlier ones; an
    image given twice, in this call or an earlier one, is counted once: a grown folder can be
    given again)."""
    from memkd_stream.cli.scoring import score_paths

    args = ctx.args
    folder = resolve_dataset(args.good)
    if folder.kind != "folder":
        raise UsageError(
            f"--good takes a plain folder of good images the line never trained on; {args.good} "
            "is an MVTec-layout category, whose train/good is what fits train on"
        )
    seen = set(counted)
    fresh: dict[Path, str] = {}
    for path in folder.train:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:_HASH_CHARS]
        if digest not in seen:
            seen.add(digest)
            fresh[Path(path)] = digest
    repeated = len(folder.train) - len(fresh)
    if repeated:
        ctx.out.warn(
            f"{repeated} of the {len(folder.train)} images in {args.good} are already counted "
            "(same content, here or in an earlier --good): each counts once"
        )
    if not fresh:
        raise UsageError(f"every image in {args.good} is already in the calibration's evidence")
    device = torch_device(ctx.settings, None)
    precision = torch_precision(ctx.settings, None, device)
    model = stored_model(ctx.store(), args.line, active, Teachers(ctx.settings, device))
    scored = score_paths(model.model, model.teacher, list(fresh), precision=precision)
    for bad in scored.skipped:
        ctx.out.warn(f"skipped {bad.path}: {bad.reason}")
    if not scored.paths:
        raise UsageError(f"no image in {args.good} could be scored (see the warnings above)")
    if not old.scores:
        ctx.out.warn(
            "the calibration stores no held-out scores (fitted before they were kept): the "
            f"threshold comes from {args.good}'s images alone"
        )
    total = len(old.scores) + len(scored.paths)
    if total < _ENOUGH_GOOD:
        ctx.out.warn(
            f"{total} good-image scores in all: below {_ENOUGH_GOOD} the threshold often misses "
            "its target rate by more than 2x (model/README.md, 'Thresholds with more good images')"
        )
    new = old.with_more_good(scored.scores, args.target_fpr, args.rule)
    return new, counted + [fresh[p] for p in scored.paths]


def good_hashes(record: dict[str, Any]) -> list[str]:
    """The images ``--good`` has added to this version's calibration so far (content hashes);
    every threshold move carries them on."""
    recalibrated = (record.get("provenance") or {}).get("recalibrated") or {}
    return list(recalibrated.get("good_sha256") or [])


def _compare(ctx: Context, active: int, old: Any, new: Any) -> tuple[GateImages, Any]:
    """Both thresholds judged on the same scores: of --gate-data scored once with the shared
    weights, else the calibration's stored held-out scores."""
    from memkd.gate import decide, figures, score_images

    margin = ctx.settings.gate.margin
    if ctx.args.gate_data is None:
        images = GateImages([], [], f"the {len(new.scores)} good scores of the calibration")
        if not new.scores:
            images.notes.append("the calibration stores no held-out scores")
            return images, None
        good: Any = new.scores
        bad: Any = []
    else:
        images = gate_images(ctx.args.gate_data)
        device = torch_device(ctx.settings, None)
        precision = torch_precision(ctx.settings, None, device)
        model = stored_model(ctx.store(), ctx.args.line, active, Teachers(ctx.settings, device))
        good = score_images(model.model, model.teacher, images.good, precision)
        bad = score_images(model.model, model.teacher, images.bad, precision)
    candidate, incumbent = figures(good, bad, new.threshold), figures(good, bad, old.threshold)
    return images, decide(candidate, incumbent, margin)


def _print(console: Console, data: dict[str, Any]) -> None:
    line, moved, fpr = data["line"], data["threshold"], data["expected_fpr"]
    text = (
        f"published {line}@{data['version']}: {line}@{data['from_version']}'s weights with "
        f"threshold {moved['to']:.4g} (was {moved['from']:.4g}; rule {data['rule']})"
    )
    if fpr["to"] is not None:
        text += f"; expected false alarms on good images {100 * fpr['to']:.3g} %"
    evidence = data["good_scores"]
    if evidence["to"] != evidence["from"]:
        text += f"; from {evidence['to']} good-image scores (was {evidence['from']})"
    console.print(text)
    print_gate(console, data["gate"], line)

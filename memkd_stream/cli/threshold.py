"""``memkd-stream lines threshold A (--value X | --target-fpr F | --good DIR)``: move a threshold,
no retraining.

The new version reuses the active version's weights: it is a delta of the same full parent
(``memkd.delta.save_recalibrated``: the active version's own delta tensors, none when it is
full, and the new calibration), so even a WRN50 line moves a few KiB and nothing is downloaded
to make it. ``--target-fpr`` moves the threshold to another expected false-alarm rate with the
calibration's rule and the held-out scores it stores (``Calibration.retarget``); a calibration
that does not store them is refused with a clear message (``--value`` still works). ``--good``
adds evidence: the folder's good images, scored with the active version, join the stored
held-out scores and the rule sets the threshold again (``Calibration.with_more_good``): nine
held-out scores cannot pin a 1 % rate, fifty more mostly can. The new version is then
published and passes the activation gate like any version (``cli.gate``): without
``--gate-data`` the images are the held-out ones the calibration stores (the two versions share
weights, so they score them alike; the fit that made the weights held them out).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from memkd_stream.cli.gate import GateImages, gate_images, print_gate, settle
from memkd_stream.cli.inputs import (
    check_readable,
    resolve_dataset,
    torch_device,
    torch_precision,
)
from memkd_stream.cli.main import Context, UsageError
from memkd_stream.cli.stored_models import Teachers, stored_model

__all__ = ["move_threshold"]


def move_threshold(ctx: Context) -> int:
    """The ``lines threshold`` command (see the module docstring)."""
    from memkd.anomaly import Calibration
    from memkd.artifact import read_artifact
    from memkd.delta import save_recalibrated
    from memkd.lineage import ParentRef, is_delta

    args = ctx.args
    if args.value is None and args.target_fpr is None and args.good is None:
        raise UsageError("say how to move the threshold: --value X, --target-fpr F or --good DIR")
    if args.value is not None and args.good is not None:
        raise UsageError("--good sets the threshold from the images; it cannot go with --value")
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
    if args.good is not None:
        new = _with_more_good(ctx, active, old, record)
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
              "rule": new.rule, "target_fpr": new.target_fpr, "by": ctx.who}  # fmt: skip
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


def _with_more_good(ctx: Context, active: int, old: Any, record: dict[str, Any]) -> Any:
    """The calibration with ``--good``'s images scored by the active version as more evidence."""
    from memkd.gate import score_images

    args, ref = ctx.args, f"{ctx.args.line}@{active}"
    if record.get("tiling"):
        raise UsageError(
            f"{ref} is a tiled line: its threshold is on frame scores, which --good does not "
            "compute yet; refit the line with the extra good images instead"
        )
    folder = resolve_dataset(args.good)
    if folder.kind != "folder":
        raise UsageError(
            f"--good takes a plain folder of good images the line never trained on; {args.good} "
            "is an MVTec-layout category, whose train/good is what fits train on"
        )
    good, unreadable = check_readable(folder.train)
    for bad in unreadable:
        ctx.out.warn(f"skipped {bad.path}: {bad.reason}")
    if not good:
        raise UsageError(f"no readable images in {args.good}")
    device = torch_device(ctx.settings, None)
    precision = torch_precision(ctx.settings, None, device)
    model = stored_model(ctx.store(), args.line, active, Teachers(ctx.settings, device))
    scores = score_images(model.model, model.teacher, good, precision)
    return old.with_more_good(scores, args.target_fpr, args.rule)


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

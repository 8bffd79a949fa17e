"""``memkd-stream fit --line A --memory-only --data NEW``: re-learn a line's memories in minutes.

Starts from the line's active version (composed with its full parent when it is itself a
delta), keeps its network, input size, normalisation and region of interest, and re-learns only
the NR memories on the new good images (``memkd.refit``); the threshold is recalibrated with the
fit's own rule on a held-out slice of them. The artifact is a delta of the active version's full
parent (the memories and the calibration: a few hundred KiB for WRN50), written to a file first,
then published and passed through the activation gate like any fit (``cli.gate``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from memkd_stream.cli.fit import (
    _calibrate_on_defects,
    _defect_examples,
    _print_report,
    _Progress,
    _readable_dataset,
    evaluate_on_test,
    fit_report,
    publish_trained,
    train_config_from,
    trained_on,
)
from memkd_stream.cli.gate import gate_new_version, plan_images
from memkd_stream.cli.inputs import torch_device, torch_precision
from memkd_stream.cli.main import Context, UsageError
from memkd_stream.cli.stored_models import Teachers, stored_model

__all__ = ["MEMORY_ONLY_STEPS", "refit_line"]

# Optimiser steps of a memory-only refit unless --steps/--epochs say otherwise: bench/refit.py
# measured how much of a full fit's recovery this buys after a shift (README.md).
MEMORY_ONLY_STEPS = 60


def refit_line(ctx: Context) -> int:
    """The ``fit --memory-only`` command (see the module docstring)."""
    args, out, settings = ctx.args, ctx.out, ctx.settings
    for given, flag in ((args.backbone, "--backbone"), (args.roi, "--roi"),
                        (args.input_size, "--input-size")):  # fmt: skip
        if given is not None:
            raise UsageError(
                f"--memory-only keeps the active version's network and input, so {flag} cannot "
                "change them; run a full fit for that"
            )
    store = ctx.store()
    active = store.current(args.line)
    if active is None:
        store.versions(args.line)  # an unknown line says so
        raise UsageError(
            f"line {args.line} has no active version to start from; train it with a full "
            f"`memkd-stream fit --line {args.line}` first"
        )
    roi = store.meta(args.line, active)["metadata"].get("roi")
    dataset = _readable_dataset(args.data, roi, args.min_images, out)
    gating = not (args.no_publish or args.no_activate)
    gate_images, dataset.train = plan_images(ctx, dataset, active if gating else None)
    defect_paths = _defect_examples(args.defects, roi, out)
    if args.threshold_from == "defects" and not defect_paths and not dataset.has_labels:
        raise UsageError("--threshold-from defects needs defective examples: pass --defects DIR")

    from memkd.delta import memory_tensor_names, save_delta
    from memkd.refit import refit_memory

    device = torch_device(settings, args.device)
    precision = torch_precision(settings, args.precision, device)
    teachers = Teachers(settings, device, args.teacher_weights)
    out.note(f"loading {args.line}@{active} to start from ({precision} compute on {device})")
    parent = stored_model(store, args.line, active, teachers)
    steps = args.steps if args.steps or args.epochs else MEMORY_ONLY_STEPS
    train_config = train_config_from(args, device, precision, steps)
    out.note(
        f"re-learning the memories of {parent.ref} on {len(dataset.train)} good images from "
        f"{dataset.root} ({train_config.total_steps(len(dataset.train))} steps, seed {args.seed})"
    )
    started = time.perf_counter()
    with _Progress(out) as progress:
        result = refit_memory(
            parent.model, dataset.train, parent.teacher, train_config, progress,
            init=args.memory_init,
        )  # fmt: skip
    model = result.model
    earlier = parent.model.provenance.get("trained_on")
    if earlier is not None:  # unknown for the network: then say nothing rather than half
        model.provenance["trained_on"] = sorted(
            set(earlier) | set(trained_on(dataset.train, train_config))
        )
    model.provenance["refit"]["from"] = parent.ref
    _calibrate_on_defects(ctx, model, parent.teacher, dataset, defect_paths, precision)
    evaluation = evaluate_on_test(ctx, model, parent.teacher, dataset, precision)
    elapsed = time.perf_counter() - started

    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    path = args.out or Path(f"{args.line}-{stamp}-memory.safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    replaced = set(memory_tensor_names(model)) | set(parent.replaced)
    sha256 = save_delta(model, path, parent.full_parent, replaced, dtype=args.dtype)

    version = publish_trained(ctx, None if args.no_publish else store, path)
    gate = None
    if version is not None and not args.no_activate:
        gate = gate_new_version(
            ctx, store, version, active, model, teachers, gate_images, precision
        )
    data = fit_report(
        ctx, model, result.report, dataset, evaluation, path=path, sha256=sha256,
        version=version, gate=gate, backbone=parent.record["model"]["backbone"], device=device,
        precision=precision, elapsed=elapsed,
    )  # fmt: skip
    full = parent.full_parent
    data["parent"] = f"{args.line}@{full.version}"
    data["refit"] = {"from": parent.ref, "memory_init": args.memory_init,
                     "delta_bytes": path.stat().st_size}  # fmt: skip
    out.result(data, lambda console: _print_report(console, data))
    return gate.exit_code if gate is not None else 0

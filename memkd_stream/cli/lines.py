"""``memkd-stream lines ...``: see, activate, roll back, delete, publish, move thresholds of,
shadow and export line models, and set a line's late policy.

Every change goes through the line store in Redis, so workers hear about each activation on
its events channel and swap between batches. Rollback activates the version that was active
before the current one (twice = back where you started). ``publish`` and ``threshold`` activate
only through the activation gate (``cli.gate``; exit 5 when it keeps the active version);
``activate`` is the operator's own act and shows what the records say about the two versions.
A line's late policy (what an image older than worker.max_age_ms becomes: scored with late_ms,
or dead-lettered stale) is an operations choice kept beside the line, not in its model; workers
pick a change up at once.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from memkd_stream.cli.gate import (
    compare_with_active,
    figure_rows,
    gate_images,
    print_gate,
    settle,
)
from memkd_stream.cli.inputs import TARGET_THRESHOLD_RULES, parse_positive, parse_rate
from memkd_stream.cli.main import Context, UsageError, line_arg, whole_number
from memkd_stream.cli.output import Output, human_bytes
from memkd_stream.cli.stored_models import Teachers, stored_model
from memkd_stream.contract.lateness import LatePolicy
from memkd_stream.lines.activation import ActivationReason

if TYPE_CHECKING:
    from memkd_stream.lines.store import LineStore

__all__ = ["record_summary", "register"]


_EPILOG = """\
examples:
  memkd-stream lines list
  memkd-stream lines show A
  memkd-stream lines activate A 3
  memkd-stream lines rollback A
  memkd-stream lines publish A A-20250101T120000Z.safetensors --gate-data data/held-out
  memkd-stream lines threshold A --target-fpr 0.005
  memkd-stream lines threshold A --good data/A/good-since-march
  memkd-stream lines shadow A 7
  memkd-stream lines export A --version 3 --out A-v3.safetensors
  memkd-stream lines late-policy A dead-letter
  memkd-stream lines late-policy A --clear

exit 5: published, but the activation gate kept the active version (see DESIGN.md section 5)
"""

_LINE_HELP = "line id, e.g. A or press-3"
# Version numbers start at 1, so anything else is a usage error, not a Redis round trip.
_VERSION = whole_number(1, "a version number (1, 2, ...)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "lines",
        help="list, show, activate, roll back, delete line models in Redis",
        description=__doc__,
        epilog=_EPILOG,
    )
    commands = parser.add_subparsers(dest="lines_command", metavar="ACTION", required=True)

    def action(name: str, summary: str) -> argparse.ArgumentParser:
        # The one-line help doubles as the description, so `lines X --help` says what X does.
        return commands.add_parser(
            name, help=summary, description=summary[0].upper() + summary[1:] + "."
        )

    p = action("list", "every line with its active version")
    p.set_defaults(handler=_list)

    p = action("show", "a line's versions and what each was trained with")
    p.add_argument("line", type=line_arg, metavar="LINE", help=_LINE_HELP)
    p.set_defaults(handler=_show)

    p = action("history", "a line's activations, newest first")
    p.add_argument("line", type=line_arg, metavar="LINE", help=_LINE_HELP)
    p.set_defaults(handler=_history)

    p = action("activate", "make VERSION the one workers serve (they swap between batches)")
    p.add_argument("line", type=line_arg, metavar="LINE", help=_LINE_HELP)
    p.add_argument("version", type=_VERSION, metavar="VERSION", help="a stored version number")
    p.set_defaults(handler=_activate)

    p = action("rollback", "activate the version that was active before the current one")
    p.add_argument("line", type=line_arg, metavar="LINE", help=_LINE_HELP)
    p.set_defaults(handler=_rollback)

    p = action("delete", "delete one version (never the active one)")
    p.add_argument("line", type=line_arg, metavar="LINE", help=_LINE_HELP)
    p.add_argument("version", type=_VERSION, metavar="VERSION", help="a stored version number")
    p.set_defaults(handler=_delete)

    p = action(
        "publish",
        "upload an artifact file as the line's next version; activate it if it is not worse "
        "than the active one on --gate-data",
    )
    p.add_argument("line", type=line_arg, metavar="LINE", help=_LINE_HELP)
    p.add_argument("artifact", type=Path, metavar="FILE", help="a .safetensors line artifact")
    p.add_argument("--no-activate", action="store_true", help="upload only; keep the current one")
    _gate_options(p)
    p.set_defaults(handler=_publish)

    p = action(
        "threshold",
        "publish the active version's weights with another threshold (a delta; gated, then "
        "hot-swapped like any version)",
    )
    p.add_argument("line", type=line_arg, metavar="LINE", help=_LINE_HELP)
    how = p.add_mutually_exclusive_group()
    how.add_argument("--value", type=parse_positive, metavar="X", help="this raw threshold")
    how.add_argument(
        "--target-fpr",
        type=parse_rate,
        metavar="F",
        help="the threshold the calibration's rule sets for this expected false-alarm rate, "
        "from the held-out scores it stores (and --good's)",
    )
    p.add_argument(
        "--good",
        type=Path,
        metavar="DIR",
        help="a folder of good images of the line, never trained on (50 or more: a fit's few "
        "held-out images rarely hold a target rate within 2x): scored with the active version "
        "and added to the calibration's evidence, each image once however often given; the "
        "threshold is set again at --target-fpr, else the calibration's target",
    )
    p.add_argument(
        "--rule",
        choices=TARGET_THRESHOLD_RULES,
        help="with --target-fpr or --good: the rule to use (default: the calibration's when it "
        "sets a target rate, else lognormal_fit)",
    )
    p.add_argument("--out", type=Path, metavar="FILE", help="artifact path (default ./<line>-...)")
    _gate_options(p)
    p.set_defaults(handler=_threshold)

    p = action(
        "shadow",
        "make workers also score LINE with VERSION and put its verdict beside the active one's",
    )
    p.add_argument("line", type=line_arg, metavar="LINE", help=_LINE_HELP)
    p.add_argument("version", type=_VERSION, nargs="?", metavar="VERSION", help="a stored version")
    p.add_argument("--off", action="store_true", help="stop shadowing")
    p.set_defaults(handler=_shadow)

    p = action("export", "write a version's artifact to a file (sha256-checked)")
    p.add_argument("line", type=line_arg, metavar="LINE", help=_LINE_HELP)
    p.add_argument(
        "--version", type=_VERSION, metavar="VERSION", help="default: the active version"
    )
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="file to write")
    p.set_defaults(handler=_export)

    p = action(
        "late-policy",
        "show, set or clear what the line's late images become (its override of "
        "worker.late_policy)",
    )
    p.add_argument("line", type=line_arg, metavar="LINE", help=_LINE_HELP)
    p.add_argument(
        "policy",
        nargs="?",
        choices=[policy.value for policy in LatePolicy],
        metavar="POLICY",
        help="score (scored, the result says late_ms) or dead-letter (dead-lettered stale); "
        "without it: show the line's policy",
    )
    p.add_argument(
        "--clear", action="store_true", help="remove the override: worker.late_policy applies"
    )
    p.set_defaults(handler=_late_policy)


def _gate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gate-data",
        type=Path,
        metavar="DIR",
        help="images neither version trained on, to compare with the active version first (a "
        "folder of good images or a category with a test split)",
    )
    p.add_argument(
        "--force", action="store_true", help="activate even if the gate refuses or cannot compare"
    )


def record_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The few facts of an artifact record that operators compare between versions."""
    calibration = record.get("calibration") or {}
    provenance = record.get("provenance") or {}
    model = record.get("model") or {}
    return {
        "backbone": model.get("backbone"),
        "memory": model.get("memory"),
        "input_size": record.get("input_size"),
        "roi": record.get("roi"),
        "tiling": record.get("tiling"),
        "threshold": calibration.get("threshold"),
        "n_train": provenance.get("n_train"),
        "steps": provenance.get("steps"),
        "seed": provenance.get("seed"),
        "metrics": provenance.get("metrics") or {},
    }


def _list(ctx: Context) -> int:
    store = ctx.store()
    rows: list[dict[str, Any]] = []
    for line in store.lines():
        versions = store.versions(line)
        current = store.current(line)
        summary = record_summary(store.meta(line, current)["metadata"]) if current else {}
        history = store.history(line) if current else []
        rows.append(
            {
                "line": line,
                "current": current,
                "versions": versions,
                "backbone": summary.get("backbone"),
                "threshold": summary.get("threshold"),
                "activated_at": history[0]["at"] if history else None,
            }
        )

    def human(console: Console) -> None:
        if not rows:
            console.print(f"no lines in Redis at {store.location}")
            return
        console.print(
            Output.table(
                ["LINE", "ACTIVE", "VERSIONS", "BACKBONE", "THRESHOLD", "ACTIVATED AT"],
                [
                    (
                        r["line"],
                        r["current"],
                        ",".join(map(str, r["versions"])),
                        r["backbone"],
                        _num(r["threshold"]),
                        r["activated_at"],
                    )
                    for r in rows
                ],
            )
        )

    ctx.out.result({"lines": rows}, human)
    return 0


def _show(ctx: Context) -> int:
    store, line = ctx.store(), ctx.args.line
    versions = store.versions(line)
    current = store.current(line)
    shadow = store.shadow(line)
    metas = [store.meta(line, v) for v in versions]
    late = store.late_policy(line)
    data = {"line": line, "current": current, "shadow": shadow, "late_policy": late,
            "versions": metas}  # fmt: skip

    def human(console: Console) -> None:
        console.print(f"line {line}: active version {current if current else 'none'}")
        if shadow is not None:
            console.print(f"shadow: {line}@{shadow} (workers also score it; results carry both)")
        if late is not None:
            console.print(f"late policy: {late.value} (this line's override)")
        rows = []
        for meta in metas:
            s = record_summary(meta["metadata"])
            kind = lineage(meta)
            rows.append(
                (
                    ("* " if meta["version"] == current else "  ") + str(meta["version"]),
                    kind,
                    meta["created_at"],
                    human_bytes(meta["size"]),
                    meta["sha256"][:12],
                    s["backbone"],
                    _num(s["threshold"]),
                    _metric(s["metrics"]),
                    meta["published_by"],
                )
            )
        console.print(
            Output.table(
                [
                    "VERSION",
                    "KIND",
                    "PUBLISHED",
                    "SIZE",
                    "SHA256",
                    "BACKBONE",
                    "THRESHOLD",
                    "METRICS",
                    "BY",
                ],
                rows,
            )
        )

    ctx.out.result(data, human)
    return 0


def _history(ctx: Context) -> int:
    history = ctx.store().history(ctx.args.line)
    table = Output.table(
        ["AT", "VERSION", "ACTION", "REASON", "WHO"],
        [(h["at"], h["version"], h["action"], h.get("reason"), h["who"]) for h in history],
    )
    ctx.out.result({"line": ctx.args.line, "history": history}, lambda c: c.print(table))
    return 0


def _activate(ctx: Context) -> int:
    store, line, version = ctx.store(), ctx.args.line, ctx.args.version
    before = store.current(line)
    comparison = _recorded_comparison(store, line, version, before)
    store.activate(line, version, who=ctx.who, reason=ActivationReason.OPERATOR)
    data = {"line": line, "current": version, "previous": before, "comparison": comparison}

    def human(console: Console) -> None:
        _print_comparison(console, line, version, before, comparison)
        console.print(f"{line}@{version} is now active (was {_ref(line, before)}; operator)")

    ctx.out.result(data, human)
    return 0


def _recorded_comparison(
    store: LineStore, line: str, version: int, before: int | None
) -> dict[str, Any] | None:
    """What the two versions' records say about each other: the gate's figures when
    ``version`` was compared with ``before``, else both fits' test metrics when both have them."""
    if before is None or before == version:
        return None
    new, old = store.meta(line, version), store.meta(line, before)
    gate = new["notes"].get("gate") or {}
    if gate.get("compared_with") == before and gate.get("decision"):
        return {"kind": "gate", "gate": gate}
    metrics = [record_summary(m["metadata"])["metrics"] for m in (new, old)]
    if all(metrics):
        return {"kind": "metrics", "new": metrics[0], "active": metrics[1]}
    return None


def _print_comparison(
    console: Console, line: str, version: int, before: int | None, comparison: Any
) -> None:
    if not comparison:
        return
    new, old = f"{line}@{version}", f"{line}@{before}"
    if comparison["kind"] == "gate":
        decision = comparison["gate"]["decision"]
        console.print(f"the gate's figures ({'passed' if decision['passed'] else 'refused'}):")
        console.print(Output.table(["", new, old], figure_rows(decision)))
        return
    names = sorted(set(comparison["new"]) | set(comparison["active"]))
    console.print("test metrics of each fit (each on the data it was fitted with):")
    rows = [(n, _num(comparison["new"].get(n)), _num(comparison["active"].get(n))) for n in names]
    console.print(Output.table(["", new, old], rows))


def _rollback(ctx: Context) -> int:
    store, line = ctx.store(), ctx.args.line
    before = store.current(line)
    version = store.rollback(line, who=ctx.who)
    ctx.out.result(
        {"line": line, "current": version, "previous": before},
        f"rolled back {line}: {line}@{version} is now active (was {_ref(line, before)})",
    )
    return 0


def _delete(ctx: Context) -> int:
    line, version = ctx.args.line, ctx.args.version
    ctx.store().delete(line, version)
    ctx.out.result({"line": line, "deleted": version}, f"deleted {line}@{version}")
    return 0


def _publish(ctx: Context) -> int:
    args, store, line = ctx.args, ctx.store(), ctx.args.line
    incumbent = None if args.no_activate else store.current(line)
    images = gate_images(args.gate_data) if args.gate_data and incumbent is not None else None
    version = store.publish(line, args.artifact, activate=False, who=ctx.who)
    if args.no_activate:
        ctx.out.result(
            {"line": line, "version": version, "active": False},
            f"published {args.artifact} as {line}@{version} (not active; active is "
            f"{_ref(line, store.current(line))})",
        )
        return 0
    decision = None
    if incumbent is not None and images is not None:
        from memkd_stream.cli.inputs import torch_device, torch_precision

        device = torch_device(ctx.settings, None)
        precision = torch_precision(ctx.settings, None, device)
        teachers = Teachers(ctx.settings, device)
        new = stored_model(store, line, version, teachers)
        old = stored_model(store, line, incumbent, teachers)
        margin = ctx.settings.gate.margin
        decision = compare_with_active(new.model, old.model, teachers, images, margin, precision)
    outcome = settle(ctx, store, line, version, incumbent, decision, images, force=args.force)
    data = {"line": line, "version": version, "active": outcome.activated,
            "gate": outcome.to_dict()}  # fmt: skip

    def human(console: Console) -> None:
        console.print(f"published {args.artifact} as {line}@{version}")
        print_gate(console, data["gate"], line)

    ctx.out.result(data, human)
    return outcome.exit_code


def _threshold(ctx: Context) -> int:
    from memkd_stream.cli.threshold import move_threshold

    return move_threshold(ctx)


def _shadow(ctx: Context) -> int:
    args, store, line = ctx.args, ctx.store(), ctx.args.line
    if args.off == (args.version is not None):
        raise UsageError("give a VERSION to shadow the active one with, or --off")
    store.set_shadow(line, None if args.off else args.version)
    if args.off:
        text = f"line {line}: shadowing stopped"
    else:
        text = (
            f"line {line}: workers also score it with {line}@{args.version}; results carry its "
            "score and verdict in 'shadow' (activating that version or a rollback ends it)"
        )
    ctx.out.result({"line": line, "shadow": None if args.off else args.version}, text)
    return 0


def _export(ctx: Context) -> int:
    store, line = ctx.store(), ctx.args.line
    version = ctx.args.version or store.current(line)
    if version is None:
        store.versions(line)  # unknown line -> UnknownLine
        from memkd_stream.lines.errors import UnknownVersion

        raise UnknownVersion(f"line {line} has no active version; pass --version")
    meta = store.download(line, version, ctx.args.out)
    ctx.out.result(
        {"line": line, "version": version, "path": str(ctx.args.out), "sha256": meta["sha256"]},
        f"wrote {line}@{version} to {ctx.args.out} ({human_bytes(meta['size'])}, sha256 checked)",
    )
    return 0


def _late_policy(ctx: Context) -> int:
    store, line, args = ctx.store(), ctx.args.line, ctx.args
    if args.clear and args.policy:
        raise UsageError("give a POLICY or --clear, not both")
    worker = ctx.settings.worker
    if args.clear or args.policy:
        policy = None if args.clear else LatePolicy(args.policy)
        store.set_late_policy(line, policy)
        said = (
            f"line {line}: late policy override cleared (workers apply worker.late_policy)"
            if policy is None
            else f"line {line}: late images are now {_LATE_MEANING[policy]}"
        )
        ctx.out.result({"line": line, "late_policy": policy}, said)
        return 0
    store.versions(line)  # an unknown line is an error, not "no override"
    override = store.late_policy(line)
    data = {
        "line": line,
        "late_policy": override,
        "default": worker.late_policy,
        "max_age_ms": worker.max_age_ms,
    }
    age = "off" if worker.max_age_ms is None else f"{worker.max_age_ms} ms"
    said = (
        f"line {line}: late policy {override.value} (this line's override): late images are "
        f"{_LATE_MEANING[override]}"
        if override is not None
        else f"line {line}: no override; workers apply worker.late_policy "
        f"(in these settings: {worker.late_policy.value}, max age {age})"
    )
    ctx.out.result(data, said)
    return 0


_LATE_MEANING = {
    LatePolicy.SCORE: "scored, and their results carry late_ms",
    LatePolicy.DEAD_LETTER: "dead-lettered with code stale",
}


def lineage(meta: dict[str, Any]) -> str:
    """Where a version's weights come from, for ``lines show``: ``full``, or ``delta of P`` and
    what made it (a threshold moved from version N, or a memory-only refit of L@N)."""
    if meta.get("parent") is None:
        return "full"
    provenance = meta["metadata"].get("provenance") or {}
    made = ""
    if provenance.get("recalibrated", {}).get("from_version") is not None:
        made = f": threshold of {provenance['recalibrated']['from_version']}"
    elif provenance.get("refit", {}).get("from"):
        made = f": memory refit of {str(provenance['refit']['from']).rpartition('@')[2]}"
    return f"delta of {meta['parent']}{made}"


def _ref(line: str, version: int | None) -> str:
    return f"{line}@{version}" if version is not None else "none"


def _num(value: float | None) -> str | None:
    return None if value is None else f"{value:.4g}"


def _metric(metrics: dict[str, Any]) -> str | None:
    names = {"image_auroc": "img", "pixel_auroc": "px", "aupro": "pro"}
    shown = [
        f"{short} {metrics[k]:.3f}" for k, short in names.items() if metrics.get(k) is not None
    ]
    return " ".join(shown) or None

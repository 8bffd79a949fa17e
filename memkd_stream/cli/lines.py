"""``memkd-stream lines ...``: see, activate, roll back, delete, publish and export line models,
and set a line's late policy.

Every change goes through the line store in Redis, so workers hear about each activation on
its events channel and swap between batches. Rollback activates the version that was active
before the current one (twice = back where you started). A line's late policy (what an image
older than worker.max_age_ms becomes: scored with late_ms, or dead-lettered stale) is an
operations choice kept beside the line, not in its model; workers pick a change up at once.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from memkd_stream.cli.main import Context, UsageError, line_arg, whole_number
from memkd_stream.cli.output import Output, human_bytes
from memkd_stream.contract.lateness import LatePolicy

__all__ = ["record_summary", "register"]


_EPILOG = """\
examples:
  memkd-stream lines list
  memkd-stream lines show A
  memkd-stream lines activate A 3
  memkd-stream lines rollback A
  memkd-stream lines publish A A-20250101T120000Z.safetensors
  memkd-stream lines export A --version 3 --out A-v3.safetensors
  memkd-stream lines late-policy A dead-letter
  memkd-stream lines late-policy A --clear
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

    p = action("publish", "upload an artifact file as the line's next version")
    p.add_argument("line", type=line_arg, metavar="LINE", help=_LINE_HELP)
    p.add_argument("artifact", type=Path, metavar="FILE", help="a .safetensors line artifact")
    p.add_argument("--no-activate", action="store_true", help="upload only; keep the current one")
    p.set_defaults(handler=_publish)

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
    metas = [store.meta(line, v) for v in versions]
    late = store.late_policy(line)
    data = {"line": line, "current": current, "late_policy": late, "versions": metas}

    def human(console: Console) -> None:
        console.print(f"line {line}: active version {current if current else 'none'}")
        if late is not None:
            console.print(f"late policy: {late.value} (this line's override)")
        rows = []
        for meta in metas:
            s = record_summary(meta["metadata"])
            rows.append(
                (
                    ("* " if meta["version"] == current else "  ") + str(meta["version"]),
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
        ["AT", "VERSION", "ACTION", "WHO"],
        [(h["at"], h["version"], h["action"], h["who"]) for h in history],
    )
    ctx.out.result({"line": ctx.args.line, "history": history}, lambda c: c.print(table))
    return 0


def _activate(ctx: Context) -> int:
    store, line, version = ctx.store(), ctx.args.line, ctx.args.version
    before = store.current(line)
    store.activate(line, version, who=ctx.who)
    ctx.out.result(
        {"line": line, "current": version, "previous": before},
        f"{line}@{version} is now active (was {_ref(line, before)})",
    )
    return 0


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
    store, line = ctx.store(), ctx.args.line
    activate = not ctx.args.no_activate
    version = store.publish(line, ctx.args.artifact, activate=activate, who=ctx.who)
    state = "active" if activate else f"not active; active is {_ref(line, store.current(line))}"
    ctx.out.result(
        {"line": line, "version": version, "active": activate},
        f"published {ctx.args.artifact} as {line}@{version} ({state})",
    )
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

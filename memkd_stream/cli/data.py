"""``memkd-stream data synth``: write a generated dataset in MVTec AD layout.

To try the project without real camera images, ``memkd.datasets`` builds a dataset from
scikit-image's CC0 photographs with synthetic defects and exact masks. The layout is MVTec AD's, so
``fit`` and ``eval`` read it exactly as they read the real thing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from memkd_stream.cli.main import Context, whole_number
from memkd_stream.cli.output import Output

__all__ = ["register"]

_COUNT = whole_number(0)
_SIZE = whole_number(64)  # what the generator needs


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="datasets: generate the synthetic MVTec-layout set",
        description="Datasets for fit and eval.",
        epilog="example:\n  memkd-stream data synth --out data/synth --category grass\n",
    )
    commands = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = commands.add_parser(
        "synth",
        help="write a seeded synthetic dataset in MVTec AD layout",
        description=__doc__,
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--category",
        action="append",
        metavar="NAME",
        help="category to generate (repeat for several; default: all)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--n-train", type=_COUNT, metavar="N", help="good training images per category (60)"
    )
    p.add_argument(
        "--n-test-good", type=_COUNT, metavar="N", help="good test images per category (12)"
    )
    p.add_argument(
        "--n-test-bad", type=_COUNT, metavar="N", help="defective test images per category (24)"
    )
    p.add_argument("--size", type=_SIZE, metavar="PX", help="image side in pixels (256)")
    p.add_argument("--overwrite", action="store_true", help="replace existing category folders")
    p.set_defaults(handler=_synth)


def _synth(ctx: Context) -> int:
    from memkd.datasets import synth_dataset

    args = ctx.args
    kwargs: dict[str, Any] = {"seed": args.seed, "overwrite": args.overwrite}
    if args.category:
        kwargs["categories"] = tuple(args.category)
    for name in ("n_train", "n_test_good", "n_test_bad", "size"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    started = time.perf_counter()
    synth_dataset(args.out, **kwargs)
    seconds = time.perf_counter() - started
    wanted = set(args.category or ())
    categories = [
        _count(folder)
        for folder in sorted(Path(args.out).iterdir())
        if (folder / "train" / "good").is_dir() and (not wanted or folder.name in wanted)
    ]
    data = {"out": str(args.out), "seed": args.seed, "seconds": round(seconds, 2)}
    data["categories"] = categories

    def human(console: Console) -> None:
        console.print(
            Output.table(
                ["CATEGORY", "TRAIN GOOD", "TEST GOOD", "TEST DEFECTIVE", "PATH"],
                [
                    (c["name"], c["train_good"], c["test_good"], c["test_defective"], c["path"])
                    for c in categories
                ],
            )
        )
        console.print(f"wrote {len(categories)} categories to {args.out} in {seconds:.1f} s")

    ctx.out.result(data, human)
    return 0


def _count(category: Path) -> dict[str, Any]:
    """Image counts of one MVTec-layout category folder."""

    def pngs(folder: Path) -> int:
        return sum(1 for f in folder.glob("*") if f.is_file()) if folder.is_dir() else 0

    test = category / "test"
    defects = (
        [d for d in test.iterdir() if d.is_dir() and d.name != "good"] if test.is_dir() else []
    )
    return {
        "name": category.name,
        "path": str(category),
        "train_good": pngs(category / "train" / "good"),
        "test_good": pngs(test / "good"),
        "test_defective": sum(pngs(d) for d in defects),
        "defects": sorted(d.name for d in defects),
    }

"""Run every benchmark in bench/ (``make bench``): figures, not pass/fail.

Each ``bench/*.py`` other than this file is run in turn with the same Python, ``--quick`` passed
through when given. A benchmark that fails is reported and the others still run; the exit status
is non-zero if any failed.

    .venv/bin/python bench/run.py [--quick] [--only model_speed,accuracy]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    args = parser.parse_args(argv)
    wanted = {n.strip() for n in args.only.split(",") if n.strip()}
    scripts = [
        p
        for p in sorted(HERE.glob("*.py"))
        if p.name != Path(__file__).name
        and not p.name.startswith("_")
        and (not wanted or p.stem in wanted)
    ]
    failed = []
    for script in scripts:
        cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
        print(f"== {script.stem}: {' '.join(cmd[1:])}", flush=True)
        start = time.monotonic()
        code = subprocess.call(cmd, cwd=HERE.parent)
        print(f"== {script.stem}: exit {code} after {time.monotonic() - start:.0f}s", flush=True)
        if code != 0:
            failed.append(script.stem)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Forward speed of the line model (score + anomaly map), per backbone, batch, memory, mode.

Figures, not a test. Each row is one (backbone, mode, memory, batch) point in images/s, written
as CSV to bench/results/model_speed.csv (timm's results-file style) and printed as a table.
Modes: ``eager`` (NCHW), ``channels_last``, ``compile`` (torch.compile of teacher + student,
skipped with a note where it fails). Memory on and off are timed interleaved and the best of the
repetitions is kept, so that load from other processes on a shared machine hurts both alike.
On a machine shared with other jobs, ``--clock cpu --threads 1`` times the process's own CPU
time, which other processes barely disturb (the README's figures say which clock they used).
WRN50 uses random weights when no weight file is given: speed does not depend on the values.

    .venv/bin/python bench/model_speed.py            # full grid
    .venv/bin/python bench/model_speed.py --quick    # 3 teachers, batch 1 and 8, eager, CPU clock
"""

from __future__ import annotations

import argparse
import csv
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from memkd.anomaly import anomaly_result
from memkd.backbones import Teacher, load_teacher
from memkd.config import ModelConfig
from memkd.network import MemKDStudent

RESULTS = Path(__file__).resolve().parent / "results"
FIELDS = [
    "backbone", "mode", "memory", "batch", "input_size", "width_mult", "images_per_s",
    "ms_per_batch", "gflops_per_image", "device", "threads", "precision", "clock", "torch", "note",
]  # fmt: skip


def _forward_fn(
    teacher: Teacher, student: MemKDStudent, mode: str
) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        t = teacher(x)
        return anomaly_result(t, student(t), tuple(x.shape[-2:])).scores

    if mode == "channels_last":
        teacher.to(memory_format=torch.channels_last)
        student.to(memory_format=torch.channels_last)
    if mode == "compile":
        return torch.compile(forward)
    return forward


CLOCK = time.perf_counter


def _time_once(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    start = CLOCK()
    with torch.inference_mode():
        fn(x)
    return CLOCK() - start


def _gflops(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    """GFLOPs per image of one forward, counted by torch (immune to machine load)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        fn(x)
    return counter.get_total_flops() / 1e9 / x.shape[0]


def bench_point(
    backbone: str, teacher: Teacher, mode: str, batch: int, size: int, mult: float, reps: int
) -> list[dict[str, object]]:
    """Time memory on and off for one (backbone, mode, batch); return two rows."""
    fns, notes = {}, {}
    x = torch.randn(batch, 3, size, size)
    if mode == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    for memory in (True, False):
        torch.manual_seed(0)
        cfg = ModelConfig(backbone=backbone, input_size=size, width_mult=mult, memory=memory)
        student = MemKDStudent(cfg, teacher.channels, teacher.spec.signed_features).eval()
        notes[memory] = ""
        try:
            fns[memory] = _forward_fn(teacher, student, mode)
            for _ in range(2):  # warm-up (compile happens here)
                _time_once(fns[memory], x)
        except Exception as exc:  # torch.compile needs a working C++ toolchain
            notes[memory] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
    flops = {m: _gflops(fns[m], x) if mode == "eager" and not notes[m] else None for m in fns}
    best = {m: float("inf") for m in fns if not notes[m]}
    for _ in range(reps):
        for memory in best:
            best[memory] = min(best[memory], _time_once(fns[memory], x))
    teacher.to(memory_format=torch.contiguous_format)
    rows = []
    for memory in (True, False):
        sec = best.get(memory, float("nan"))
        rows.append(
            {
                "backbone": backbone,
                "mode": mode,
                "memory": memory,
                "batch": batch,
                "input_size": size,
                "width_mult": mult,
                "images_per_s": round(batch / sec, 2) if sec == sec else "",
                "ms_per_batch": round(sec * 1000, 1) if sec == sec else "",
                "gflops_per_image": round(flops[memory], 3) if flops.get(memory) else "",
                "device": "cpu",
                "threads": torch.get_num_threads(),
                "precision": "fp32",
                "clock": "cpu" if CLOCK is time.process_time else "wall",
                "torch": torch.__version__,
                "note": notes[memory] + (" random weights" if "wide" in backbone else ""),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grid for make bench")
    parser.add_argument(
        "--backbones", default="tf_efficientnet_lite2,tf_efficientnet_lite0,wide_resnet50_2"
    )
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--modes", default="eager,channels_last,compile")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--width-mult", type=float, default=ModelConfig().width_mult)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--wrn50-weights", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "model_speed.csv")
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.modes, args.reps = "1,8", "eager", 3
        args.clock, args.threads = "cpu", args.threads or 1  # shared CI cores: wall time is noise
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        global CLOCK
        CLOCK = time.process_time
    rows: list[dict[str, object]] = []
    for backbone in args.backbones.split(","):
        weights = args.wrn50_weights if backbone == "wide_resnet50_2" else None
        random = backbone == "wide_resnet50_2" and weights is None
        teacher = load_teacher(backbone, weights, random_weights=random)
        mult = args.width_mult if backbone == "tf_efficientnet_lite0" else 1.0
        for mode in args.modes.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                rows += bench_point(backbone, teacher, mode, batch, args.size, mult, args.reps)
                on, off = rows[-2], rows[-1]
                cost = (
                    f"{100 * (off['images_per_s'] / on['images_per_s'] - 1):+.1f}%"
                    if on["images_per_s"] and off["images_per_s"]
                    else "n/a"
                )
                fcost = (
                    f" (FLOPs {on['gflops_per_image']} vs {off['gflops_per_image']} GFLOP/img, "
                    f"{100 * (on['gflops_per_image'] / off['gflops_per_image'] - 1):+.1f}%)"
                    if on["gflops_per_image"] and off["gflops_per_image"]
                    else ""
                )
                print(
                    f"{backbone:22s} {mode:13s} b={batch:<3d} memory on {on['images_per_s']!s:>8} "
                    f"img/s  off {off['images_per_s']!s:>8} img/s  memory cost {cost}{fcost} "
                    f"{on['note'] or off['note']}",
                    flush=True,
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out} ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Speed anchor: anomalib's Reverse Distillation vs our scoring path, side by side in one process.

Figures, not a test. anomalib's ``ReverseDistillationModel`` (WRN50 encoder from timm, layers 1-3,
``pre_trained=False`` so nothing is downloaded, anomaly map mode "add" as its Lightning model
defaults to) in eval mode against ``LineModel.score`` with a WRN50 teacher of random weights
(model/MEMKD.md §2, §6): speed does not depend on the weights' values. Both sides get the same
input tensor (batch 8 of 256x256 by default), the same torch thread count, eval mode and
``torch.inference_mode``, on the CPU; every variant is warmed up, then the variants are timed in
turn (A, B, C, A, B, C...) so that load from other processes hurts them alike, and the median
per variant is kept.

Variants:
  * ``anomalib`` as shipped (NCHW) and ``anomalib channels_last`` (module and input converted),
    so the ratio is not just a memory-layout effect;
  * ``ours fp32`` memory on, and memory off (= Reverse Distillation in our code), so the cost of
    the memory is visible (target: <= 5 % of the forward time at batch 8);
  * ``ours bf16 forced``: the fp32 path under ``torch.autocast("cpu", torch.bfloat16)``. On a
    CPU without native bf16 (AVX-512-BF16 / AMX) this is emulated and slower: it is reported as
    measured, not tuned;
  * ``ours auto``: ``LineModel.score(..., precision="auto")``: bf16 where the CPU does it
    natively, else fp32.

Known differences that remain (README "Speed"): anomalib's bottleneck uses width_per_group 64,
ours 128 as RD's official code (so ours does more FLOPs: the GFLOP column shows it); anomalib blurs
with one 33x33 2-D convolution and reflect padding, ours with two 1-D convolutions; anomalib's
encoder is timm's WRN50, ours torchvision's (same architecture and FLOPs); ``LineModel.score``
takes the NCHW batch and converts it to channels_last itself (its teacher and student live in
channels_last), the anomalib channels_last variant is handed an input already converted.

anomalib is not a dependency of the project: ``make bench-anomalib`` builds ``.venv-anomalib``
(anomalib pinned, torch at the project's locked version) and runs this script there. With the
project's own venv (``make bench``) it prints one line and exits 0.

    make bench-anomalib                                      # batch 8, 2 threads, 3 repetitions
    .venv-anomalib/bin/python bench/vs_anomalib.py --quick   # 2 repetitions, no extra warm-up
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import importlib.util
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
FIELDS = [
    "variant", "side", "precision", "layout", "memory", "batch", "input_size", "threads",
    "images_per_s", "ms_per_batch", "ms_min", "ms_max", "cpu_ms_per_batch", "reps",
    "ratio_vs_anomalib", "ratio_vs_anomalib_channels_last",
    "gflops_per_image", "params_m", "device", "torch", "anomalib", "note",
]  # fmt: skip

Forward = Callable[[torch.Tensor], object]


@dataclass
class Variant:
    """One timed forward: its name, how it runs and what it measured."""

    name: str
    side: str
    precision: str
    layout: str
    memory: bool
    forward: Forward
    model: torch.nn.Module
    layout_input: bool = False  # hand it the input already in channels_last
    slow: bool = False  # too slow to repeat: its first call is its only sample
    seconds: list[float] = field(default_factory=list)  # wall clock
    cpu_seconds: list[float] = field(default_factory=list)  # this process, all threads
    gflops: float | None = None
    note: str = ""


def _anomalib_available() -> bool:
    return importlib.util.find_spec("anomalib") is not None


def _anomalib_model(size: int, channels_last: bool) -> torch.nn.Module:
    with warnings.catch_warnings():  # anomalib's own deprecation notices at import
        warnings.simplefilter("ignore", FutureWarning)
        from anomalib.models.image.reverse_distillation.anomaly_map import (
            AnomalyMapGenerationMode,
        )
        from anomalib.models.image.reverse_distillation.torch_model import (
            ReverseDistillationModel,
        )

    torch.manual_seed(0)
    model = ReverseDistillationModel(
        backbone="wide_resnet50_2",
        input_size=(size, size),
        layers=["layer1", "layer2", "layer3"],
        anomaly_map_mode=AnomalyMapGenerationMode.ADD,  # its Lightning model's default
        pre_trained=False,
    ).eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _anomalib_variants(size: int) -> list[Variant]:
    variants = []
    for channels_last in (False, True):
        model = _anomalib_model(size, channels_last)
        variants.append(
            Variant(
                name="anomalib" + (" channels_last" if channels_last else ""),
                side="anomalib",
                precision="fp32",
                layout="channels_last" if channels_last else "NCHW",
                memory=False,
                forward=model,
                model=model,
                layout_input=channels_last,
            )
        )
    return variants


def _our_variants(size: int) -> list[Variant]:
    from memkd.backbones import load_teacher
    from memkd.config import ModelConfig
    from memkd.line_model import LineModel
    from memkd.network import MemKDStudent

    teacher = load_teacher("wide_resnet50_2", random_weights=True)  # channels_last
    models = {}
    for memory in (True, False):
        torch.manual_seed(0)
        cfg = ModelConfig(backbone="wide_resnet50_2", input_size=size, memory=memory)
        student = MemKDStudent(cfg, teacher.channels, teacher.spec.signed_features)
        models[memory] = LineModel(cfg, student, teacher.describe()).to("cpu")

    def score(model: LineModel) -> Forward:  # fp32 pinned: score's default is now "auto"
        return lambda x: model.score(teacher, x, precision="fp32")

    def bf16_forced(model: LineModel) -> Forward:
        return lambda x: model.score(teacher, x, precision="bf16")

    def auto(model: LineModel) -> Forward:
        return lambda x: model.score(teacher, x, precision="auto")

    def whole(model: LineModel) -> torch.nn.Module:  # teacher + student, for FLOPs and params
        return torch.nn.ModuleList([teacher, model.student])

    variants = [
        Variant("ours fp32", "ours", "fp32", "channels_last", True, score(models[True]),
                whole(models[True])),
        Variant("ours fp32 memory off (RD)", "ours", "fp32", "channels_last", False,
                score(models[False]), whole(models[False])),
        Variant("ours bf16 forced", "ours", "bf16", "channels_last", True,
                bf16_forced(models[True]), whole(models[True])),
    ]  # fmt: skip
    variants.append(
        Variant("ours auto", "ours", "auto", "channels_last", True, auto(models[True]),
                whole(models[True]))
    )  # fmt: skip
    return variants


def _run_once(variant: Variant, x: torch.Tensor) -> tuple[float, float, object]:
    """Wall and process CPU seconds of one forward, and its output."""
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        out = variant.forward(x)
    return time.perf_counter() - start, time.process_time() - cpu, out


def _gflops(variant: Variant, x: torch.Tensor) -> float:
    """GFLOPs per image of one forward, counted by torch on a batch of one."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        variant.forward(x[:1])
    return counter.get_total_flops() / 1e9


def _check_same_footing(variants: list[Variant]) -> None:
    """Refuse to time a network with any module in train mode (BN and dropout would differ)."""
    for v in variants:
        training = [
            n
            for n, m in v.model.named_modules()
            if m.training and not isinstance(m, torch.nn.ModuleList)  # our teacher+student pair
        ]
        if training:
            raise RuntimeError(f"{v.name}: modules in train mode: {training[:3]}")


def _shapes(out: object) -> str:
    maps = getattr(out, "anomaly_map", None)
    if maps is None:
        maps = getattr(out, "maps", None)
    scores = getattr(out, "pred_score", None)
    if scores is None:
        scores = getattr(out, "scores", None)
    return f"map {tuple(maps.shape) if maps is not None else '?'}, " + (
        f"score {tuple(scores.shape) if scores is not None else '?'}"
    )


def measure(
    variants: list[Variant], batch: int, size: int, reps: int, warmup: int, slow_s: float
) -> None:
    """Warm up every variant, then time them interleaved; failures become notes.

    A variant whose first call takes longer than ``slow_s`` (bf16 emulated on a CPU without native
    bf16 takes minutes per batch) is not run again: that first call is its one sample (one-time
    set-up costs are milliseconds against minutes), and its note says so.
    """
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    for v in variants:
        inp = x_cl if v.layout_input else x
        try:
            wall, cpu, out = _run_once(v, inp)
            print(f"  {v.name:28s} {_shapes(out)}, first call {wall:.1f} s", flush=True)
            if wall > slow_s:
                v.slow, v.seconds, v.cpu_seconds = True, [wall], [cpu]
                v.note = f"one sample (its first call: {wall:.0f} s > --slow-s {slow_s:.0f})"
            for _ in range(0 if v.slow else warmup):
                _run_once(v, inp)
            if v.precision == "fp32":
                v.gflops = _gflops(v, inp)
        except Exception as exc:  # report and go on with the others
            v.note = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
            print(f"  {v.name}: {v.note}", flush=True)
    for rep in range(reps):
        live = [v for v in variants if not v.slow and not v.note.startswith("failed")]
        if not live:
            break
        for v in live:
            wall, cpu, _ = _run_once(v, x_cl if v.layout_input else x)
            v.seconds.append(wall)
            v.cpu_seconds.append(cpu)
        print(
            f"  rep {rep + 1}/{reps}: "
            + ", ".join(f"{v.name} {v.seconds[-1] * 1000:.0f} ms" for v in live),
            flush=True,
        )


def rows_of(variants: list[Variant], batch: int, size: int) -> list[dict[str, object]]:
    """One CSV row per variant; ratios are img/s over anomalib's (as shipped, channels_last)."""
    try:
        anomalib_version = importlib.metadata.version("anomalib")
    except importlib.metadata.PackageNotFoundError:
        anomalib_version = ""
    base = {
        v.layout: statistics.median(v.seconds)
        for v in variants
        if v.side == "anomalib" and v.seconds
    }
    rows = []
    for v in variants:
        med = statistics.median(v.seconds) if v.seconds else None
        rows.append(
            {
                "variant": v.name,
                "side": v.side,
                "precision": v.precision,
                "layout": v.layout,
                "memory": v.memory,
                "batch": batch,
                "input_size": size,
                "threads": torch.get_num_threads(),
                "images_per_s": round(batch / med, 3) if med else "",
                "ms_per_batch": round(med * 1000, 1) if med else "",
                "ms_min": round(min(v.seconds) * 1000, 1) if med else "",
                "ms_max": round(max(v.seconds) * 1000, 1) if med else "",
                "cpu_ms_per_batch": round(statistics.median(v.cpu_seconds) * 1000, 1)
                if med
                else "",
                "reps": len(v.seconds),
                "ratio_vs_anomalib": round(base["NCHW"] / med, 3) if med and "NCHW" in base else "",
                "ratio_vs_anomalib_channels_last": round(base["channels_last"] / med, 3)
                if med and "channels_last" in base
                else "",
                "gflops_per_image": round(v.gflops, 2) if v.gflops else "",
                "params_m": round(sum(p.numel() for p in v.model.parameters()) / 1e6, 2),
                "device": "cpu",
                "torch": torch.__version__,
                "anomalib": anomalib_version,
                "note": "; ".join(
                    n for n in (v.note, "random weights" if v.side == "ours" else "") if n
                ),
            }
        )
    return rows


def markdown(rows: list[dict[str, object]]) -> str:
    lines = [
        "| variant | precision | layout | img/s (median) | ms/batch (min-max) "
        "| x anomalib | x anomalib CL | CPU ms/batch | GFLOP/img | params (M) | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        span = f"{r['ms_per_batch']} ({r['ms_min']}-{r['ms_max']})" if r["reps"] else ""
        lines.append(
            f"| {r['variant']} | {r['precision']} | {r['layout']} | {r['images_per_s']} | {span} "
            f"| {r['ratio_vs_anomalib']} | {r['ratio_vs_anomalib_channels_last']} "
            f"| {r['cpu_ms_per_batch']} | {r['gflops_per_image']} | {r['params_m']} | {r['note']} |"
        )
    return "\n".join(lines)


def memory_cost(rows: list[dict[str, object]]) -> str:
    """Memory on vs off (= RD) of our fp32 path, in forward time and FLOPs."""
    by = {r["variant"]: r for r in rows}
    on, off = by.get("ours fp32"), by.get("ours fp32 memory off (RD)")
    if not on or not off or not on["ms_per_batch"] or not off["ms_per_batch"]:
        return "memory cost: not measured"
    t = 100 * (float(on["ms_per_batch"]) / float(off["ms_per_batch"]) - 1)  # type: ignore[arg-type]
    text = f"memory cost (ours fp32, on vs off): {t:+.1f} % forward time"
    if on["gflops_per_image"] and off["gflops_per_image"]:
        f = 100 * (float(on["gflops_per_image"]) / float(off["gflops_per_image"]) - 1)  # type: ignore[arg-type]
        text += f", {f:+.1f} % FLOPs"
    return text + " (target <= 5 % at batch 8)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 repetitions, no extra warm-up")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="torch threads, both sides")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls after the first")
    parser.add_argument(
        "--slow-s", type=float, default=60.0, help="a variant slower than this is timed once"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the CSV/Markdown")
    args = parser.parse_args(argv)
    if not _anomalib_available():
        print("vs_anomalib: anomalib is not installed in this Python; run `make bench-anomalib`")
        return 0
    if args.quick:
        args.reps, args.warmup = 2, 0
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    variants = _anomalib_variants(args.size) + _our_variants(args.size)
    _check_same_footing(variants)
    print(
        f"vs_anomalib: batch {args.batch}, {args.size}x{args.size}, cpu, "
        f"{torch.get_num_threads()} threads, {args.warmup} warm-up + {args.reps} interleaved reps",
        flush=True,
    )
    load_before = os.getloadavg()[0]
    measure(variants, args.batch, args.size, args.reps, args.warmup, args.slow_s)
    rows = rows_of(variants, args.batch, args.size)
    table = markdown(rows)
    context = (
        f"{memory_cost(rows)}\n\nbatch {args.batch}, {args.size}x{args.size}, cpu "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, {args.warmup} warm-up + "
        f"{args.reps} interleaved reps, median wall clock; 1-min load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    print(table, context, sep="\n")
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "vs_anomalib.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "vs_anomalib.md").write_text(table + "\n\n" + context + "\n")
    print(f"wrote {args.out}/vs_anomalib.csv and .md in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

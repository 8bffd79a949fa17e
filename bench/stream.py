"""End-to-end worker throughput vs model-only and decode-only, at 256 px and camera size.

Figures, not a test. For each backbone (lite2, the default, and lite0: a line fitted briefly;
WRN50: random teacher weights and an untrained student, as bench/model_speed.py times it: speed
does not depend on the values) and each input kind (``256``: the generated category as 256 px
PNGs; ``5mp``: the same images upscaled to 2448x2048 and saved as JPEG, quality 90, like a line
camera's frames):

1. **model-only**: the images preprocessed in advance, ``LineModel.score`` on batches of
   ``worker.max_batch`` in a fresh thread, like the worker's inference thread.
2. **decode-only**: ``ImageDecoder.decode`` (the worker's decode, i.e. ``memkd.preprocess``) over
   the same request bytes on a pool of ``worker.decode_threads`` threads.
3. **end-to-end**: the bytes produced to private topics first, then one in-process ``Worker``
   (real Kafka + Redis) drains the backlog: images/s from the first record consumed to the last
   result acknowledged, the per-image time split from the worker's metrics, and where the CPU
   went (CPU ms per image per thread group, from /proc: the profile of the real path).
4. **paced** (``--paced N``, first variant only): N images sent at half the saturated rate;
   latency = result record timestamp - ``memkd-sent-at`` (p50/p99).

``ratio`` = end-to-end / min(model-only, decode-only), the goal being >= 0.9. Here decode and
model share 2 CPU cores, so end to end cannot beat 1 / (1/model + 1/decode) either: ``ceiling``
is that, and ``vs_ceiling`` the share of it reached. On a GPU node the model runs on the GPU and
decodes on the CPU cores, so min() is the bound there. Every variant (``--variant
NAME:ENV=VALUE,...``: worker settings or knobs, e.g. ``dec1:MEMKD_WORKER__DECODE_THREADS=1``) is
run in turn, repeated ``--reps`` times, interleaved, with model-only and decode-only measured in
the same rounds; report ratios from one run (this machine is shared and noisy) and the load
average printed with them. Needs the local services (``make bench`` starts them). Prints a table
and writes bench/results/<tag>.csv (``--tag``, default ``stream``).

``OMP_WAIT_POLICY`` is read once, when torch loads, so it cannot be a variant: compare it with
one process per policy, alternated (README.md, "Speed", has the loop).

    .venv/bin/python bench/stream.py [--quick] [--backbones lite2,lite0,wrn50] [--inputs 256,5mp]
        [--images N] [--variant NAME:ENV=VALUE,...] [--reps R] [--paced N] [--tag T]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from memkd_stream.contract.headers import HEADER_ID, HEADER_SENT_AT

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
STAGES = ("decode", "batch_wait", "forward", "encode", "produce")
CPU_GROUPS = ("inference", "decode", "publisher", "consumer", "kafka", "bench", "other")
BACKBONES = {
    "lite2": "tf_efficientnet_lite2",
    "lite0": "tf_efficientnet_lite0",
    "wrn50": "wide_resnet50_2",
}
LITES = ("lite2", "lite0")  # lines fitted briefly on their packaged weights
CAMERA = (2448, 2048)
FIELDS = [
    "backbone", "input", "variant", "rep", "mode", "images", "images_per_s", "ratio", "ceiling",
    "vs_ceiling", "p50_ms", "p99_ms", *(f"{s}_ms" for s in STAGES),
    *(f"cpu_{g}_ms" for g in CPU_GROUPS), "batch", "input_size", "device", "threads", "load1",
    "torch", "omp_wait_policy", "note",
]  # fmt: skip


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- where the CPU goes ---------------------------------------------------------------------


def _thread_group(name: str) -> str:
    if name == "memkd-infer" or name == "native":  # native: torch's intra-op (OpenMP) threads
        return "inference"
    if name.startswith("memkd-decode"):
        return "decode"
    if name == "memkd-publish":
        return "publisher"
    if name.startswith("kafka") or name.endswith("network-thread"):
        return "kafka"  # kafka-python's own threads: the producer's sender, heartbeats
    if "(run)" in name:
        return "consumer"  # the consumer loop runs in the worker's run() thread
    if name == "MainThread":
        return "bench"
    return "other"


def _thread_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds of every thread of this process (Linux), by native id -> (group, seconds)."""
    tick = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[int, tuple[str, float]] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        name = names.get(int(tid), "native")
        out[int(tid)] = (_thread_group(name), (int(fields[11]) + int(fields[12])) / tick)
    return out


def _cpu_ms_per_image(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], n: int
) -> dict[str, float]:
    spent = dict.fromkeys(CPU_GROUPS, 0.0)
    for tid, (group, seconds) in after.items():
        spent[group] += seconds - before.get(tid, (group, 0.0))[1]
    return {f"cpu_{g}_ms": s / n * 1000 for g, s in spent.items()}


# --- inputs and lines -----------------------------------------------------------------------


def _images(workdir: Path, size: int) -> list[Path]:
    from memkd.datasets import synth_dataset

    (cat,) = synth_dataset(
        workdir / "data", categories=("grass",), n_train=12, n_test_good=6, n_test_bad=6, size=size
    )
    return [p for p in sorted(cat.rglob("*.png")) if "ground_truth" not in p.parts]


def _camera_jpeg(path: Path) -> bytes:
    """A generated image upscaled to a line camera's 2448x2048 and saved as JPEG."""
    from PIL import Image

    frame = Image.open(path).convert("RGB").resize(CAMERA, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    frame.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _lite_line(name: str, workdir: Path, pngs: list[Path], size: int, device: str) -> Path:
    from memkd.config import ModelConfig, TrainConfig
    from memkd.train import fit

    train = [p for p in pngs if "train" in p.parts]
    result = fit(
        train,
        ModelConfig(backbone=BACKBONES[name], input_size=size),
        TrainConfig(steps=2, batch_size=4, device=device),
    )
    artifact = workdir / f"{name}-line.safetensors"
    result.model.save(artifact)
    return artifact


def _wrn50_line(workdir: Path, pngs: list[Path], size: int) -> tuple[Path, Path]:
    """A WRN50 teacher file of random weights (the worker loads it like the real one) and an
    untrained line on it, calibrated on a few images so that it has a threshold."""
    import torchvision
    from memkd.anomaly import Calibration
    from memkd.backbones import load_teacher
    from memkd.config import ModelConfig
    from memkd.line_model import LineModel
    from memkd.network import MemKDStudent
    from memkd.train import load_batch

    torch.manual_seed(0)
    weights = workdir / "wrn50-random.pth"
    torch.save(torchvision.models.wide_resnet50_2(weights=None).state_dict(), weights)
    teacher = load_teacher(BACKBONES["wrn50"], weights)
    cfg = ModelConfig(backbone=BACKBONES["wrn50"], input_size=size)
    student = MemKDStudent(cfg, teacher.channels, teacher.spec.signed_features)
    model = LineModel(cfg, student, teacher.describe()).to("cpu")
    scores = model.score(teacher, load_batch(pngs[:4], size, model.mean, model.std)).scores
    model.calibration = Calibration.from_scores(scores.numpy())
    artifact = workdir / "wrn50-line.safetensors"
    model.save(artifact, dtype="fp16")  # half the bytes through Redis; scored in fp32
    return artifact, weights


def model_only(
    artifact: Path, values: list[bytes], batch: int, device: str, passes: int = 1
) -> dict[str, Any]:
    """Best of ``passes`` over the batches, timed in a fresh thread like the worker's inference
    thread (on this 2-core box under load, OpenMP in the main thread ran ~2x slower)."""
    from memkd.backbones import load_teacher
    from memkd.line_model import LineModel
    from memkd.preprocess import load_for_model, preprocess

    record = LineModel.load(artifact, None)
    weights = os.environ.get("MEMKD_MODEL__WRN50_WEIGHTS")
    teacher = load_teacher(record.config.backbone, weights, device=device)
    model = LineModel.load(artifact, teacher)
    size = model.input_size
    tensors = [
        preprocess(load_for_model(v, size, model.roi), size, model.mean, model.std, model.roi)
        for v in values
    ]
    batches = [torch.stack(tensors[i : i + batch]) for i in range(0, len(tensors), batch)]
    best: tuple[float, dict[str, float]] = (float("inf"), {})

    def one_pass() -> None:
        nonlocal best
        model.score(teacher, batches[0].to(device)).scores.cpu()  # warm-up
        cpu_before = _thread_cpu()
        start = time.perf_counter()
        for x in batches:
            model.score(teacher, x.to(device)).scores.cpu()
        elapsed = time.perf_counter() - start
        if elapsed < best[0]:
            best = (elapsed, _cpu_ms_per_image(cpu_before, _thread_cpu(), len(values)))

    for _ in range(passes):
        thread = threading.Thread(target=one_pass, name="memkd-infer")
        thread.start()
        thread.join()
    return {
        "mode": "model-only",
        "images": len(values),
        "images_per_s": len(values) / best[0],
        "forward_ms": best[0] / len(values) * 1000,
        "cpu_inference_ms": best[1]["cpu_inference_ms"],
        "note": f"best of {passes}",
    }


def decode_only(artifact: Path, values: list[bytes], threads: int) -> dict[str, Any]:
    """The worker's decode (``ImageDecoder.decode``) of every request value on ``threads``."""
    from memkd.line_model import LineModel

    from memkd_stream.worker.decode import ImageDecoder

    model = LineModel.load(artifact, None)
    decoder = ImageDecoder(max_pixels=50_000_000)
    params = {"size": model.input_size, "mean": model.mean, "std": model.std, "roi": model.roi}
    decoder.decode(values[0], **params)  # warm-up
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="memkd-decode") as pool:
        list(pool.map(lambda v: decoder.decode(v, **params), values[:threads]))  # threads up
        cpu_before = _thread_cpu()
        start = time.perf_counter()
        list(pool.map(lambda v: decoder.decode(v, **params), values))
        elapsed = time.perf_counter() - start
        cpu = _cpu_ms_per_image(cpu_before, _thread_cpu(), len(values))
    return {
        "mode": "decode-only",
        "images": len(values),
        "images_per_s": len(values) / elapsed,
        "decode_ms": elapsed * threads / len(values) * 1000,
        "cpu_decode_ms": cpu["cpu_decode_ms"],
        "note": f"{threads} threads; decode_ms = thread-ms per image",
    }


# --- end to end -----------------------------------------------------------------------------

_RUN_ENV = ("INSPECT_TOPIC", "RESULTS_TOPIC", "DLQ_TOPIC", "GROUP_ID")


class _Stream:
    """One line published under a private Redis prefix; private topics and group per run."""

    def __init__(self, artifact: Path, batch: int, device: str) -> None:
        from memkd_stream.lines.store import LineStore
        from memkd_stream.settings import load_settings

        self.prefix = f"bench-{uuid.uuid4().hex[:8]}"
        os.environ.update(
            {
                "MEMKD_REDIS__KEY_PREFIX": f"{self.prefix}:",
                "MEMKD_MODEL__DEVICE": device,
                "MEMKD_WORKER__MAX_BATCH": str(batch),
                "MEMKD_WORKER__QUEUE_MAX_RECORDS": str(max(64, 8 * batch)),
                "MEMKD_LOG__LEVEL": "WARNING",
            }
        )
        self.base_env = dict(os.environ)
        self.store = LineStore.from_settings(load_settings().redis)
        self.store.publish("A", artifact, who="bench")
        self.topics: list[str] = []

    def new_run(self, env: dict[str, str]) -> None:
        """Fresh topics and group, and the variant's settings, for the next worker."""
        from memkd_stream.broker.topics import ensure_topics
        from memkd_stream.settings import load_settings

        run = f"{self.prefix}-{uuid.uuid4().hex[:6]}"
        os.environ.clear()
        os.environ.update(self.base_env)
        os.environ.update(env)
        for key, suffix in zip(_RUN_ENV, ("inspect", "results", "dlq", "group"), strict=True):
            os.environ[f"MEMKD_KAFKA__{key}"] = f"{run}.{suffix}" if suffix != "group" else run
        os.environ["MEMKD_WORKER__WORKER_ID"] = run
        self.settings = load_settings()
        ensure_topics(self.settings.kafka, partitions=3)
        self.topics += [f"{run}.{s}" for s in ("inspect", "results", "dlq")]

    def produce(self, images: list[bytes], rate: float | None = None, prefix: str = "") -> None:
        from memkd_stream.broker.clients import make_producer

        producer = make_producer(self.settings.kafka)
        start = time.monotonic()
        for i, value in enumerate(images):
            if rate:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            headers = [
                (HEADER_ID, f"{prefix}{i}".encode()),
                (HEADER_SENT_AT, str(int(time.time() * 1000)).encode()),
            ]
            producer.send(self.settings.kafka.inspect_topic, key=b"A", value=value, headers=headers)
        producer.flush(120)
        producer.close(5)

    def start_worker(self) -> Any:
        from memkd_stream.worker.app import Worker
        from memkd_stream.worker.engine import Engine
        from memkd_stream.worker.metrics import WorkerMetrics

        metrics = WorkerMetrics()
        engine = Engine(self.settings.model, self.settings.worker, self.store, metrics=metrics)
        engine.preload(["A"])
        self.worker = Worker(self.settings, engine, metrics=metrics)
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()
        return metrics

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(60)

    def latencies(self, prefix: str, count: int, timeout_s: float) -> list[float]:
        """result record timestamp - memkd-sent-at, per result whose id starts with prefix."""
        from kafka import TopicPartition

        from memkd_stream.broker.clients import make_reader

        kafka = self.settings.kafka
        consumer = make_reader(kafka)
        tps = [TopicPartition(kafka.results_topic, p) for p in range(3)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[float] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < count and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for r in records:
                    headers = dict(r.headers or [])
                    if headers.get(HEADER_ID, b"").decode().startswith(prefix):
                        out.append(float(r.timestamp - int(headers["memkd-sent-at"])))
        consumer.close()
        return out

    def cleanup(self) -> None:
        try:
            from memkd_stream.broker.clients import make_admin

            admin = make_admin(self.settings.kafka)
            existing = set(admin.list_topics())
            admin.delete_topics([t for t in self.topics if t in existing])
            admin.close()
            client = self.store.client
            keys = list(client.scan_iter(f"{self.prefix}:*"))
            if keys:
                client.delete(*keys)
        except Exception as exc:
            print(f"cleanup failed: {exc}", file=sys.stderr)


def _counter(metrics: Any, name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0


def end_to_end(
    stream: _Stream, images: list[bytes], env: dict[str, str], paced: int
) -> list[dict[str, Any]]:
    stream.new_run(env)
    stream.produce(images, prefix="sat-")  # the backlog, before the worker starts
    metrics = stream.start_worker()
    try:
        n = len(images)
        deadline = time.monotonic() + 900
        # Poll the results counter every 20 ms: reading the registry costs CPU that the worker
        # would otherwise have (at 5 ms it was ~3 % of the CPU per image at 256 px).
        while _counter(metrics, "memkd_records_in_total") == 0 and time.monotonic() < deadline:
            time.sleep(0.002)
        first = time.perf_counter()
        cpu_before = _thread_cpu()
        while _counter(metrics, "memkd_results_total", {"line": "A"}) < n:
            if time.monotonic() > deadline:
                raise RuntimeError("the worker did not finish the backlog in 15 minutes")
            time.sleep(0.02)
        elapsed = time.perf_counter() - first
        cpu = _cpu_ms_per_image(cpu_before, _thread_cpu(), n)
        rate = n / elapsed
        split = {}
        for stage in STAGES:
            total = _counter(metrics, "memkd_stage_seconds_sum", {"stage": stage})
            count = _counter(metrics, "memkd_stage_seconds_count", {"stage": stage})
            split[f"{stage}_ms"] = total / count * 1000 if count else float("nan")
        rows = [
            {
                "mode": "end-to-end",
                "images": n,
                "images_per_s": rate,
                **split,
                **cpu,
                "note": "backlog drained",
            }
        ]
        if paced:
            paced_images = [images[i % len(images)] for i in range(paced)]
            stream.produce(paced_images, rate=rate / 2, prefix="paced-")
            lat = stream.latencies("paced-", paced, 120)
            rows.append(
                {
                    "mode": "paced",
                    "images": paced,
                    "images_per_s": rate / 2,
                    "p50_ms": _pct(lat, 0.5),
                    "p99_ms": _pct(lat, 0.99),
                    "note": "half the saturated rate; latency = result ts - memkd-sent-at",
                }
            )
        return rows
    finally:
        stream.stop()
        torch.set_num_threads(_THREADS)  # a variant may have changed the process's


_THREADS = torch.get_num_threads()


# --- the run --------------------------------------------------------------------------------


def _variants(specs: list[str]) -> dict[str, dict[str, str]]:
    """``NAME:ENV=VALUE,ENV=VALUE`` -> {NAME: env}; none given = the defaults only."""
    out: dict[str, dict[str, str]] = {}
    for spec in specs or ["default:"]:
        name, _, assignments = spec.partition(":")
        env = dict(a.split("=", 1) for a in assignments.split(",") if a)
        out[name] = env
    return out


def _line(backbone: str, workdir: Path, pngs: list[Path], size: int, device: str) -> Path:
    if backbone in LITES:
        return _lite_line(backbone, workdir, pngs, size, device)
    artifact, weights = _wrn50_line(workdir, pngs, size)
    os.environ["MEMKD_MODEL__WRN50_WEIGHTS"] = str(weights)
    return artifact


def run_point(
    args: argparse.Namespace, backbone: str, kind: str, artifact: Path, values: list[bytes]
) -> list[dict[str, Any]]:
    """Model-only, decode-only and every variant end to end, ``reps`` rounds, interleaved."""
    variants = _variants(args.variant)
    stream = _Stream(artifact, args.batch, args.device)
    rows: list[dict[str, Any]] = []
    try:
        for rep in range(args.reps):
            model = model_only(artifact, values, args.batch, args.device)
            decode = decode_only(artifact, values, args.decode_threads)
            m, d = model["images_per_s"], decode["images_per_s"]
            bound, ceiling = min(m, d), 1 / (1 / m + 1 / d)
            point = [model, decode]
            for i, (name, env) in enumerate(variants.items()):
                paced = args.paced if rep == 0 and i == 0 else 0
                for row in end_to_end(stream, values, env, paced):
                    row["variant"] = name
                    point.append(row)
            for row in point:
                row.update(backbone=backbone, input=kind, rep=rep, load1=os.getloadavg()[0])
                row.setdefault("variant", "")
                if row["mode"] == "end-to-end":
                    row.update(
                        ratio=row["images_per_s"] / bound,
                        ceiling=ceiling,
                        vs_ceiling=row["images_per_s"] / ceiling,
                    )
                _print_row(row)
            rows += point
    finally:
        stream.cleanup()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="lite2 only, fewer images")
    parser.add_argument("--backbones", default="lite2,lite0,wrn50")
    parser.add_argument("--inputs", default="256,5mp")
    parser.add_argument("--images", type=int, default=None, help="lite backlog (WRN50: a third)")
    parser.add_argument("--batch", type=int, default=16, help="worker.max_batch")
    parser.add_argument("--decode-threads", type=int, default=2, help="of decode-only")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--variant", action="append", default=[], help="NAME:ENV=VALUE,...")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--paced", type=int, default=None, help="images sent paced (latency)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tag", default="stream", help="results file name")
    args = parser.parse_args(argv)
    if args.quick:
        args.backbones = "lite2"
    n = args.images or (64 if args.quick else 160)
    args.paced = (24 if args.quick else 48) if args.paced is None else args.paced

    from memkd_stream.log import configure_logging
    from memkd_stream.settings import LogSettings

    configure_logging(LogSettings(level="WARNING"))
    print(" | ".join(f"{c:>10}" for c in _COLUMNS))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        workdir = Path(tmp)
        pngs = _images(workdir, args.size)
        inputs = {
            "256": [p.read_bytes() for p in pngs],
            "5mp": [_camera_jpeg(p) for p in pngs] if "5mp" in args.inputs else [],
        }
        for backbone in args.backbones.split(","):
            artifact = _line(backbone, workdir, pngs, args.size, args.device)
            count = n if backbone in LITES else max(2 * args.batch, n // 3)
            for kind in args.inputs.split(","):
                values = [inputs[kind][i % len(inputs[kind])] for i in range(count)]
                rows += run_point(args, backbone, kind, artifact, values)
    common = {
        "batch": args.batch,
        "input_size": args.size,
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{args.tag}.csv"
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            row.update(common)
            writer.writerow({k: _fmt(row.get(k, "")) for k in FIELDS})
    print(f"\nwrote {out.relative_to(ROOT)} ({platform.node()}, {common['device']})")
    return 0


_COLUMNS = [
    "backbone", "input", "variant", "mode", "images_per_s", "ratio", "vs_ceiling", "load1",
    "decode_ms", "forward_ms", "encode_ms", "p50_ms", "p99_ms",
    *(f"cpu_{g}_ms" for g in CPU_GROUPS),
]  # fmt: skip


def _fmt(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value


def _print_row(row: dict[str, Any]) -> None:
    cells = []
    for c in _COLUMNS:
        v = row.get(c, "")
        cells.append(f"{v:>10.2f}" if isinstance(v, float) else f"{v!s:>10}")
    print(" | ".join(cells), flush=True)


if __name__ == "__main__":
    sys.exit(main())

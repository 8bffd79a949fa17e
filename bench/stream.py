"""End-to-end worker throughput and latency vs the model-only forward of the same batches.

Figures, not a test. One run, one machine, same line model (lite0 teacher, 256x256 input):

1. **model-only**: the images preprocessed in advance, ``LineModel.score`` on batches of
   ``worker.max_batch`` — the ceiling the worker can reach.
2. **end-to-end, saturated**: the same images produced to a private topic first, then one
   in-process ``Worker`` (real Kafka + Redis) drains the backlog: images/s from the first record
   consumed to the last result acknowledged, and the per-image time split from the worker's own
   metrics (decode, batch wait, forward, encode, produce).
3. **end-to-end, paced**: images sent at half the saturated rate; latency = result record
   timestamp - ``memkd-sent-at`` (p50/p99), i.e. what a camera sees.

Needs the local services (``make bench`` starts them). Prints a table and writes
bench/results/stream.csv.

    .venv/bin/python bench/stream.py [--quick] [--images N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
STAGES = ("decode", "batch_wait", "forward", "encode", "produce")
FIELDS = [
    "mode", "images", "images_per_s", "ratio_to_model", "p50_ms", "p99_ms",
    *(f"{s}_ms" for s in STAGES), "batch", "input_size", "device", "threads", "torch", "note",
]  # fmt: skip


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _prepare(workdir: Path, size: int, device: str) -> tuple[Path, list[bytes]]:
    """A synthetic category and a briefly trained lite0 line model (speed does not depend on
    how well it was trained); returns the artifact and the test+train images as PNG bytes."""
    from memkd.config import ModelConfig, TrainConfig
    from memkd.datasets import synth_dataset
    from memkd.train import fit

    (cat,) = synth_dataset(
        workdir / "data", categories=("grass",), n_train=12, n_test_good=6, n_test_bad=6, size=size
    )
    train = sorted((cat / "train" / "good").glob("*.png"))
    result = fit(
        train,
        ModelConfig(backbone="tf_efficientnet_lite0", input_size=size),
        TrainConfig(steps=2, batch_size=4, device=device),
    )
    artifact = workdir / "bench-line.safetensors"
    result.model.save(artifact)
    images = [p.read_bytes() for p in sorted(cat.rglob("*.png")) if "ground_truth" not in p.parts]
    return artifact, images


def model_only(
    artifact: Path, images: list[bytes], batch: int, device: str, passes: int = 2
) -> dict[str, Any]:
    """Best of ``passes`` over the batches, timed in a fresh thread like the worker's inference
    thread (on this 2-core box under load, OpenMP in the main thread ran ~2x slower)."""
    from memkd.backbones import load_teacher
    from memkd.line_model import LineModel
    from memkd.preprocess import load_image, preprocess

    record = LineModel.load(artifact, None)
    teacher = load_teacher(record.config.backbone, None, device=device)
    model = LineModel.load(artifact, teacher)
    tensors = [
        preprocess(load_image(b), model.input_size, model.mean, model.std, model.roi)
        for b in images
    ]
    batches = [torch.stack(tensors[i : i + batch]) for i in range(0, len(tensors), batch)]
    best: tuple[float, list[float]] = (float("inf"), [])

    def one_pass() -> None:
        nonlocal best
        model.score(teacher, batches[0].to(device)).scores.cpu()  # warm-up
        times = []
        start = time.perf_counter()
        for x in batches:
            t0 = time.perf_counter()
            model.score(teacher, x.to(device)).scores.cpu()
            times.append(time.perf_counter() - t0)
        total = time.perf_counter() - start
        if total < best[0]:
            best = (total, times)

    for _ in range(passes):
        thread = threading.Thread(target=one_pass)
        thread.start()
        thread.join()
    total, times = best
    return {
        "mode": "model-only",
        "images": len(images),
        "images_per_s": len(images) / total,
        "p50_ms": _pct(times, 0.5) * 1000,
        "p99_ms": _pct(times, 0.99) * 1000,
        "forward_ms": total / len(images) * 1000,
        "note": f"best of {passes} passes; latency = per batch forward",
    }


class _Stream:
    """Private topics, group and Redis prefix for this run; one in-process worker."""

    def __init__(self, artifact: Path, batch: int, device: str) -> None:
        from memkd_stream.broker.topics import ensure_topics
        from memkd_stream.lines.store import LineStore
        from memkd_stream.settings import load_settings

        run = f"bench-{uuid.uuid4().hex[:8]}"
        os.environ.update(
            {
                "MEMKD_KAFKA__INSPECT_TOPIC": f"{run}.inspect",
                "MEMKD_KAFKA__RESULTS_TOPIC": f"{run}.results",
                "MEMKD_KAFKA__DLQ_TOPIC": f"{run}.dlq",
                "MEMKD_KAFKA__GROUP_ID": run,
                "MEMKD_REDIS__KEY_PREFIX": f"{run}:",
                "MEMKD_MODEL__DEVICE": device,
                "MEMKD_WORKER__MAX_BATCH": str(batch),
                "MEMKD_WORKER__QUEUE_MAX_RECORDS": str(max(64, 8 * batch)),
                "MEMKD_WORKER__WORKER_ID": run,
                "MEMKD_LOG__LEVEL": "WARNING",
            }
        )
        self.run = run
        self.settings = load_settings()
        ensure_topics(self.settings.kafka, partitions=3)
        self.store = LineStore.from_settings(self.settings.redis)
        self.store.publish("A", artifact, who="bench")

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
                ("memkd-id", f"{prefix}{i}".encode()),
                ("memkd-sent-at", str(int(time.time() * 1000)).encode()),
            ]
            producer.send(self.settings.kafka.inspect_topic, key=b"A", value=value, headers=headers)
        producer.flush(60)
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
                    if headers.get("memkd-id", b"").decode().startswith(prefix):
                        sent = int(headers["memkd-sent-at"])
                        out.append(float(r.timestamp - sent))
        consumer.close()
        return out


def _counter(metrics: Any, name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0


def end_to_end(stream: _Stream, images: list[bytes], paced: int) -> list[dict[str, Any]]:
    stream.produce(images, prefix="sat-")  # the backlog, before the worker starts
    metrics = stream.start_worker()
    try:
        n = len(images)
        deadline = time.monotonic() + 900
        while _counter(metrics, "memkd_records_in_total") == 0 and time.monotonic() < deadline:
            time.sleep(0.002)
        first = time.perf_counter()
        while _counter(metrics, "memkd_results_total", {"line": "A"}) < n:
            if time.monotonic() > deadline:
                raise RuntimeError("the worker did not finish the backlog in 15 minutes")
            time.sleep(0.005)
        elapsed = time.perf_counter() - first
        rate = n / elapsed
        split = {}
        for stage in STAGES:
            total = _counter(metrics, "memkd_stage_seconds_sum", {"stage": stage})
            count = _counter(metrics, "memkd_stage_seconds_count", {"stage": stage})
            split[f"{stage}_ms"] = total / count * 1000 if count else float("nan")
        sat_lat = stream.latencies("sat-", n, 60)
        saturated = {
            "mode": "end-to-end saturated",
            "images": n,
            "images_per_s": rate,
            "p50_ms": _pct(sat_lat, 0.5),
            "p99_ms": _pct(sat_lat, 0.99),
            **split,
            "note": "backlog drained; latency includes queueing behind the backlog",
        }
        paced_images = [images[i % len(images)] for i in range(paced)]
        stream.produce(paced_images, rate=rate / 2, prefix="paced-")
        lat = stream.latencies("paced-", paced, 120)
        paced_row = {
            "mode": "end-to-end paced",
            "images": paced,
            "images_per_s": rate / 2,
            "p50_ms": _pct(lat, 0.5),
            "p99_ms": _pct(lat, 0.99),
            "note": "sent at half the saturated rate; latency = result ts - memkd-sent-at",
        }
        return [saturated, paced_row]
    finally:
        stream.stop()


def _cleanup(stream: _Stream) -> None:
    try:
        from memkd_stream.broker.clients import make_admin
        from memkd_stream.broker.topics import topic_names

        kafka = stream.settings.kafka
        admin = make_admin(kafka)
        admin.delete_topics(topic_names(kafka))
        admin.close()
        client = stream.store.client
        keys = list(client.scan_iter(f"{stream.run}:*"))
        if keys:
            client.delete(*keys)
    except Exception as exc:
        print(f"cleanup failed: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images")
    parser.add_argument("--images", type=int, default=None, help="images in the backlog")
    parser.add_argument("--batch", type=int, default=16, help="worker.max_batch")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    n = args.images or (64 if args.quick else 256)
    paced = 24 if args.quick else 96

    from memkd_stream.log import configure_logging
    from memkd_stream.settings import LogSettings

    configure_logging(LogSettings(level="WARNING"))
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        artifact, base = _prepare(Path(tmp), args.size, args.device)
        images = [base[i % len(base)] for i in range(n)]
        before = model_only(artifact, images, args.batch, args.device)
        stream = _Stream(artifact, args.batch, args.device)
        try:
            e2e = end_to_end(stream, images, paced)
        finally:
            _cleanup(stream)
        # again after, so a burst of load from other processes does not favour either side
        after = model_only(artifact, images, args.batch, args.device)
        rows = [max(before, after, key=lambda r: r["images_per_s"]), *e2e]
    model_rate = rows[0]["images_per_s"]
    common = {
        "batch": args.batch,
        "input_size": args.size,
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    for row in rows:
        row.update(common)
        row["ratio_to_model"] = row["images_per_s"] / model_rate
    _print(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "stream.csv"
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k, "")) for k in FIELDS})
    print(f"\nwrote {out.relative_to(ROOT)} ({platform.node()}, {common['device']})")
    return 0


def _fmt(value: Any) -> Any:
    return round(value, 2) if isinstance(value, float) else value


def _print(rows: list[dict[str, Any]]) -> None:
    cols = ["mode", "images", "images_per_s", "ratio_to_model", "p50_ms", "p99_ms"]
    cols += [f"{s}_ms" for s in STAGES]
    print("\n" + " | ".join(f"{c:>14}" for c in cols))
    for row in rows:
        cells = []
        for c in cols:
            v = row.get(c, "")
            cells.append(f"{v:>14.2f}" if isinstance(v, float) else f"{v!s:>14}")
        print(" | ".join(cells))
    sat = next((r for r in rows if r["mode"] == "end-to-end saturated"), None)
    if sat is not None:
        verdict = "meets" if sat["ratio_to_model"] >= 0.9 else "misses"
        print(f"\nend to end = {sat['ratio_to_model']:.2f}x model-only ({verdict} the 0.9x goal)")


if __name__ == "__main__":
    sys.exit(main())

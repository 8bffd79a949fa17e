"""Faults as figures, comparable run to run: what each fault costs a live worker.

Scenarios, each on a private Kafka + Redis pair (``deploy/local/services.py --var``, free ports):

- ``kill -9``: two workers share the partitions; one is killed with records in flight; seconds
  from the kill to the peer's first result on a partition the victim held.
- ``broker restart``: the broker is stopped (30 s, 8 s with ``--quick``; both under the worker's
  60 s unreachable budget) and started again under one worker; seconds from the broker answering
  again to the worker's first new result (the worker must not exit).
- ``redis outage``: Redis stopped for 10 s under a worker holding its line; images keep coming;
  seconds without a result while Redis was down (0 = held lines served throughout).
- ``sigterm``: SIGTERM under load; seconds to exit 0 after draining.

One row per scenario: records in, answered, missing, duplicates, seconds to recover. Figures,
not pass/fail (tests/integration/worker/test_faults.py asserts bounds); needs ``make setup``.

    .venv/bin/python bench/faults.py [--quick] [--only kill9,restart]
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support: the same helpers the fault tests use

from memkd_stream.contract.headers import HEADER_ID  # noqa: E402
from tests.support.models import tiny_artifact  # noqa: E402
from tests.support.private_services import PrivateServices  # noqa: E402
from tests.support.worker_env import WorkerEnv, wait_ready  # noqa: E402


@dataclass
class Row:
    scenario: str
    sent: int
    answered: int
    missing: int
    duplicates: int
    recover_s: float


def _env(services: PrivateServices, name: str) -> WorkerEnv:
    """A stream on the private services whose line A is the tiny model published in ``main``."""
    from memkd_stream.broker.topics import ensure_topics

    env = WorkerEnv(
        suffix=name,
        partitions=3,
        env={
            "MEMKD_KAFKA__BOOTSTRAP_SERVERS": services.bootstrap,
            "MEMKD_KAFKA__INSPECT_TOPIC": f"{name}.inspect",
            "MEMKD_KAFKA__RESULTS_TOPIC": f"{name}.results",
            "MEMKD_KAFKA__DLQ_TOPIC": f"{name}.dlq",
            "MEMKD_KAFKA__GROUP_ID": name,
            "MEMKD_KAFKA__UNREACHABLE_TIMEOUT_S": "90",
            "MEMKD_REDIS__URL": services.redis_url,
            "MEMKD_REDIS__SOCKET_TIMEOUT_S": "1",
            "MEMKD_REDIS__UNREACHABLE_TIMEOUT_S": "3",
            "MEMKD_MODEL__DEVICE": "cpu",
            "MEMKD_WORKER__MAX_BATCH": "2",
            "MEMKD_WORKER__DECODE_THREADS": "1",
            "MEMKD_WORKER__DRAIN_GRACE_S": "15",
            "MEMKD_WORKER__PRELOAD_LINES": "A",
            "MEMKD_METRICS__HOST": "127.0.0.1",
        },
        kafka=services.bootstrap,
    )
    ensure_topics(env.settings().kafka, partitions=3)
    return env


def _images(data: Path, n: int, prefix: str) -> list[tuple[str, bytes]]:
    files = sorted((data / "train" / "good").glob("*.png"))
    return [(f"{prefix}-{i:03d}", files[i % len(files)].read_bytes()) for i in range(n)]


def _row(scenario: str, env: WorkerEnv, payload: list[tuple[str, bytes]], recover_s: float) -> Row:
    results = env.read(env.results, count=0, timeout_s=2)
    ids = [r["id"] for r in results]
    want = {i for i, _ in payload}
    return Row(
        scenario,
        len(payload),
        len(want & set(ids)),
        len(want - set(ids)),
        len(ids) - len(set(ids)),
        recover_s,
    )


class _Stream:
    """Images at a steady rate, round robin over the partitions, until stopped: a camera line."""

    def __init__(self, env: WorkerEnv, data: Path, prefix: str, per_s: float) -> None:
        from memkd_stream.broker.clients import make_producer

        self.env, self.per_s = env, per_s
        self.images = _images(data, 64, prefix)
        self.sent: list[tuple[str, bytes]] = []
        self._producer = make_producer(env.settings().kafka)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Stream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._producer.flush()
        self._producer.close()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            image_id = f"{self.images[0][0][0]}-{i:05d}"
            value = self.images[i % len(self.images)][1]
            self._producer.send(
                self.env.inspect, key=b"A", value=value, partition=i % 3,
                headers=[(HEADER_ID, image_id.encode())],
            )  # fmt: skip
            self.sent.append((image_id, value))
            i += 1
            self._stop.wait(1 / self.per_s)


def _kill9(services: PrivateServices, data: Path, logs: Path, n: int) -> Row:
    env = _env(services, "kill9")
    victim = env.spawn_worker(logs / "kill9-w1.log", MEMKD_WORKER__WORKER_ID="w1")
    peer = env.spawn_worker(logs / "kill9-w2.log", MEMKD_WORKER__WORKER_ID="w2")
    wait_ready(victim)
    wait_ready(peer)
    with _Stream(env, data, "k", per_s=max(4.0, n / 15)) as stream:
        # a steady stream until the victim has scored something: it holds partitions then
        while not any(r["worker"] == "w1" for r in env.read(env.results, count=0, timeout_s=1)):
            time.sleep(0.2)
        held = {
            r["source"]["partition"]
            for r in env.read(env.results, count=0, timeout_s=1)
            if r["worker"] == "w1"
        }
        victim.send_signal(signal.SIGKILL)
        killed_ms = time.time() * 1000
        after: list[float] = []
        deadline = time.monotonic() + 120
        while not after and time.monotonic() < deadline:
            time.sleep(0.5)
            after = [
                r["kafka"]["timestamp_ms"]
                for r in env.read(env.results, count=0, timeout_s=1)
                if r["worker"] == "w2" and r["source"]["partition"] in held
                and r["kafka"]["timestamp_ms"] >= killed_ms
            ]  # fmt: skip
        time.sleep(2)  # the stream goes on a little after the handover
    env.answered({i for i, _ in stream.sent}, 240)
    peer.send_signal(signal.SIGTERM)
    peer.wait(60)
    recover = (min(after) - killed_ms) / 1000 if after else float("nan")
    return _row("kill -9 (handover)", env, stream.sent, recover)


def _restart(services: PrivateServices, data: Path, logs: Path, n: int) -> Row:
    down_s = 8 if n < 60 else 30
    env = _env(services, "restart")
    worker = env.spawn_worker(logs / "restart.log")
    wait_ready(worker)
    before, after = _images(data, n // 2, "b"), _images(data, n - n // 2, "a")
    env.produce(before)
    env.answered({i for i, _ in before}, 120)
    services.stop_kafka()
    time.sleep(down_s)
    services.up()
    back_ms = time.time() * 1000
    env.produce(after)
    results = env.answered({i for i, _ in before + after}, 180)
    alive = worker.poll() is None
    firsts = [r["kafka"]["timestamp_ms"] for r in results if r["id"] in dict(after)]
    worker.send_signal(signal.SIGTERM)
    worker.wait(60)
    recover = (min(firsts) - back_ms) / 1000 if firsts and alive else float("nan")
    return _row(f"broker restart ({down_s} s down)", env, before + after, recover)


def _redis(services: PrivateServices, data: Path, logs: Path, n: int) -> Row:
    import subprocess

    env = _env(services, "redis")
    worker = env.spawn_worker(logs / "redis.log")
    wait_ready(worker)
    payload = _images(data, n, "r")
    redis_pid = int((services.var / "run" / "redis.pid").read_text())
    subprocess.run(["kill", "-STOP", str(redis_pid)], check=True)  # a hung Redis, not a closed one
    stopped = time.monotonic()
    last_ms = time.time() * 1000
    gap_ms = 0.0
    for i in range(0, len(payload), 3):
        env.produce(payload[i : i + 3])
        time.sleep(0.5)
    while time.monotonic() - stopped < 10:
        time.sleep(0.5)
    subprocess.run(["kill", "-CONT", str(redis_pid)], check=True)
    results = env.answered({i for i, _ in payload}, 120)
    stamps = sorted(r["kafka"]["timestamp_ms"] for r in results)
    for stamp in stamps:
        gap_ms = max(gap_ms, stamp - last_ms)
        last_ms = stamp
    worker.send_signal(signal.SIGTERM)
    worker.wait(60)
    return _row("redis hung 10 s (longest gap)", env, payload, gap_ms / 1000)


def _sigterm(services: PrivateServices, data: Path, logs: Path, n: int) -> Row:
    env = _env(services, "sigterm")
    worker = env.spawn_worker(logs / "sigterm.log")
    wait_ready(worker)
    payload = _images(data, n, "s")
    env.produce(payload)
    while not env.read(env.results, count=0, timeout_s=1):
        time.sleep(0.2)
    sent = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    rc = worker.wait(60)
    drained = time.monotonic() - sent if rc == 0 else float("nan")
    successor = env.spawn_worker(logs / "sigterm-2.log")
    wait_ready(successor)
    env.answered({i for i, _ in payload}, 180)
    successor.send_signal(signal.SIGTERM)
    successor.wait(60)
    return _row("sigterm under load (drain)", env, payload, drained)


SCENARIOS: dict[str, Callable[[PrivateServices, Path, Path, int], Row]] = {
    "kill9": _kill9,
    "restart": _restart,
    "redis": _redis,
    "sigterm": _sigterm,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images per scenario")
    parser.add_argument("--only", default="", help=f"comma-separated: {', '.join(SCENARIOS)}")
    args = parser.parse_args(argv)
    wanted = [s for s in args.only.split(",") if s] or list(SCENARIOS)
    n = 18 if args.quick else 60
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="memkd-faults-") as tmp:
        work = Path(tmp)
        artifact = tiny_artifact(work / "model")
        data = next((work / "model").glob("data-*/grass"))
        for name in wanted:
            services = PrivateServices(work / f"var-{name}")
            services.up()
            try:
                from memkd_stream.lines.store import LineStore
                from memkd_stream.settings import RedisSettings

                store = LineStore.from_settings(RedisSettings(url=services.redis_url))
                store.publish("A", artifact, who="bench")
                rows.append(SCENARIOS[name](services, data, work, n))
            finally:
                services.down()
            print(f"{rows[-1]}", flush=True)
    print(f"\n{'scenario':<32} {'sent':>5} {'answered':>8} {'missing':>7} {'dups':>5} recover s")
    for r in rows:
        print(
            f"{r.scenario:<32} {r.sent:>5} {r.answered:>8} {r.missing:>7} {r.duplicates:>5} "
            f"{r.recover_s:>9.1f}"
        )
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    lines = ["| scenario | sent | answered | missing | duplicates | seconds to recover |"]
    lines.append("|---|---|---|---|---|---|")
    lines += [
        f"| {r.scenario} | {r.sent} | {r.answered} | {r.missing} | {r.duplicates} | "
        f"{r.recover_s:.1f} |"
        for r in rows
    ]
    (out / "faults.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

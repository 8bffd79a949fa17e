"""What the results producer's delivery settings cost: ours (``acks=all``, not idempotent, one
request in flight, 1 MiB batches: ``broker.clients.make_producer``) against what it was
(idempotent, five in flight, kafka-python's 16 kB batches), side by side on the local broker
(``make services-up``).

The worker switched off idempotence because kafka-python 3.0 turns one record's broker refusal
into a fatal state of an idempotent producer (DESIGN.md §4); one request in flight keeps the
order that idempotence used to keep, and larger batches pay for it.
Figures, not pass/fail; the two settings alternate, so a busy machine hits both alike.

    .venv/bin/python bench/result_producer.py [--quick]
"""

from __future__ import annotations

import argparse
import time
import uuid

from memkd_stream.broker.clients import make_admin, make_producer
from memkd_stream.settings import load_settings

SETTINGS = {
    "ours (1 in flight, 1 MiB batches)": {},
    "before: idempotent, 5 in flight, 16 kB": {
        "enable_idempotence": True,
        "max_in_flight_requests_per_connection": 5,
        "batch_size": 16384,
    },
    "1 in flight, 16 kB batches": {"batch_size": 16384},
}


def _rate(kafka, topic: str, overrides: dict, n: int, value: bytes) -> float:  # type: ignore[no-untyped-def]
    producer = make_producer(kafka, client_id="memkd-bench", **overrides)
    try:
        producer.send(topic, key=b"A", value=value).get(30)  # connected and warm
        started = time.perf_counter()
        futures = [producer.send(topic, key=b"A", value=value) for _ in range(n)]
        producer.flush()
        for f in futures:
            f.get(30)
        return n / (time.perf_counter() - started)
    finally:
        producer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer records and repetitions")
    args = parser.parse_args(argv)
    n, reps = (500, 3) if args.quick else (3000, 5)
    kafka = load_settings().kafka
    topic = f"bench.producer-{uuid.uuid4().hex[:8]}"
    admin = make_admin(kafka, client_id="memkd-bench", timeout_s=30)
    from kafka.admin import NewTopic

    admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1)])
    value = b"r" * 17_000  # a result with a 256x256 mask is ~17 kB
    rates: dict[str, list[float]] = {name: [] for name in SETTINGS}
    try:
        for _ in range(reps):
            for name, overrides in SETTINGS.items():
                rates[name].append(_rate(kafka, topic, overrides, n, value))
    finally:
        admin.delete_topics([topic])
        admin.close()
    ours = sorted(rates[next(iter(SETTINGS))])[reps // 2]
    print(f"{n} results of {len(value)} bytes, acks=all, median of {reps} alternating runs")
    print(f"{'producer':<38} {'results/s':>10} {'vs ours':>8}")
    for name, values in rates.items():
        median = sorted(values)[reps // 2]
        print(f"{name:<42} {median:>10.0f} {median / ours:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""No record can stop the worker (issue: a poison-proof worker), on the real broker and Redis.

Each poison record is followed by a normal image that the same worker must still score, and every
record gets exactly one output: a result or a dead letter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka.errors import UnsupportedCodecError

from memkd_stream.broker.clients import make_admin, make_producer
from tests.support.worker_env import WorkerEnv, category_images

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

LIMIT = 1 << 20  # the worker's record limit in this test (kafka.max_message_bytes)
CAMERA_LIMIT = 4 << 20  # what the cameras may send (the topics take 16 MiB)
TOPIC_LIMIT = 200_000  # a results topic set smaller than the worker's limit
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class RawHeaderName(str):
    """A header name that encodes to bytes that are not UTF-8, as only a raw client sends."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"\xff\xfename"


def _send(env: WorkerEnv, records: list[dict[str, Any]]) -> None:
    """Produce records to partition 0, in order, as a camera allowed larger records would."""
    kafka = env.settings(MEMKD_KAFKA__MAX_MESSAGE_BYTES=str(CAMERA_LIMIT)).kafka
    client = make_producer(kafka)
    try:
        futures = [client.send(env.inspect, partition=0, **r) for r in records]
        client.flush(timeout=30)
        for f in futures:
            f.get(timeout=5)
    finally:
        client.close(timeout=5)


def _outputs(env: WorkerEnv, count: int) -> tuple[dict[str, dict], dict[str, dict]]:
    """Results and dead letters by id, once ``count`` outputs arrived (and a moment more)."""
    deadline = time.monotonic() + 120
    while True:
        results = env.read(env.results, count=0, timeout_s=1)
        dead = env.read(env.dlq, count=0, timeout_s=1)
        if len(results) + len(dead) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    time.sleep(2)  # anything extra (a second output for one record) would show now
    results = env.read(env.results, count=0, timeout_s=1)
    dead = env.read(env.dlq, count=0, timeout_s=1)
    by_id = {r["id"]: r for r in results}
    dead_by_id = {d["id"]: d for d in dead}
    assert len(by_id) == len(results) and len(dead_by_id) == len(dead), "an id answered twice"
    assert not set(by_id) & set(dead_by_id), "a record got a result and a dead letter"
    return by_id, dead_by_id


def _id(image_id: str) -> list[tuple[str, bytes]]:
    return [("memkd-id", image_id.encode())]


def test_poison_records_get_dead_letters_and_the_next_image_is_scored(
    worker_env: WorkerEnv, artifact_v1: Path, line_data: Path
) -> None:
    worker_env.store().publish("A", artifact_v1, who="test")
    good = category_images(line_data)[0].read_bytes()
    worker = worker_env.start_thread_worker(MEMKD_KAFKA__MAX_MESSAGE_BYTES=str(LIMIT))
    huge = [("blob", b"h" * 700_000), ("blob2", b"i" * 500_000)]  # 1.2 MB of sender headers
    try:
        _send(
            worker_env,
            [
                # no key, a value just under the limit: its dead letter cannot repeat either
                {"key": None, "value": b"x" * (LIMIT - 100), "headers": _id("keyless")},
                {"key": b"A", "value": good, "headers": _id("after-keyless")},
                # sender headers that push the result over the limit
                {"key": b"A", "value": good, "headers": _id("huge-headers") + huge},
                # ... and a dead letter over the limit
                {"key": b"A", "value": b"not an image" * 5000, "headers": _id("huge-dl") + huge},
                {"key": b"A", "value": good, "headers": _id("after-huge")},
                # optional metadata that cannot be read costs no inspection
                {
                    "key": b"A",
                    "value": good,
                    "headers": [
                        *_id("odd-meta"),
                        ("traceparent", b"garbage"),
                        ("memkd-sent-at", b"yesterday"),
                    ],
                },
                {
                    "key": b"A",
                    "value": good,
                    "headers": [*_id("traced"), ("traceparent", TRACEPARENT.encode())],
                },
            ],
        )
        # a header name that is not UTF-8: the client cannot even parse the record
        _send(worker_env, [{"key": b"A", "value": good, "headers": [(RawHeaderName("x"), b"")]}])
        _send(worker_env, [{"key": b"A", "value": good, "headers": _id("after-raw-header")}])
        results, dead = _outputs(worker_env, 9)
        registry = worker.worker.ctx.metrics.registry
        ignored = {
            h: registry.get_sample_value("memkd_headers_ignored_total", {"header": h})
            for h in ("traceparent", "memkd-sent-at")
        }
    finally:
        assert worker.stop() == 0  # never fatal
    assert set(results) == {
        "after-keyless",
        "huge-headers",
        "after-huge",
        "odd-meta",
        "traced",
        "after-raw-header",
    }
    keyless = dead["keyless"]
    assert keyless["error"] == "bad-header" and keyless["line"] is None
    assert keyless["headers"]["memkd-value-dropped"] == str(LIMIT - 100)
    assert int(results["huge-headers"]["headers"]["memkd-headers-dropped"]) >= 500_000
    assert dead["huge-dl"]["error"] == "decode-error"
    assert "memkd-headers-dropped" in dead["huge-dl"]["headers"]
    (unreadable,) = [d for key, d in dead.items() if d["error"] == "unreadable-record"]
    assert unreadable["source"].startswith(f"{worker_env.inspect}:0:")
    assert results["odd-meta"]["headers"]["traceparent"] == "garbage"  # passed through as sent
    assert results["traced"]["headers"]["traceparent"] == TRACEPARENT
    assert ignored == {"traceparent": 1.0, "memkd-sent-at": 1.0}


def _bmp_images(line_data: Path, folder: Path, n: int) -> dict[str, Path]:
    """Uncompressed images (BMP), so every codec really compresses the batch."""
    from PIL import Image

    out = {}
    for i, png in enumerate(category_images(line_data)[:n]):
        path = folder / f"{i}.bmp"
        Image.open(png).convert("RGB").save(path, format="BMP")
        out[f"cam-{i}"] = path
    return out


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_every_compression_of_the_java_client_is_read(
    worker_env: WorkerEnv,
    artifact_v1: Path,
    line_data: Path,
    tmp_path: Path,
    java_camera: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
    codec: str,
) -> None:
    import kafka.record.default_records as records

    decoded: list[int] = []
    real = getattr(records, f"{codec}_decode")
    monkeypatch.setattr(records, f"{codec}_decode", lambda data: decoded.append(1) or real(data))
    worker_env.store().publish("A", artifact_v1, who="test")
    images = _bmp_images(line_data, tmp_path, 3)
    java_camera(worker_env, codec, images)
    worker = worker_env.start_thread_worker()
    try:
        results, dead = _outputs(worker_env, len(images))
    finally:
        assert worker.stop() == 0
    assert set(results) == set(images) and not dead
    assert decoded, f"no {codec} batch was decompressed: the test proved nothing"


def test_a_codec_the_client_lacks_is_dead_lettered_record_by_record(
    worker_env: WorkerEnv,
    artifact_v1: Path,
    line_data: Path,
    tmp_path: Path,
    java_camera: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As on a worker without the snappy library: every record of the batch is answered."""
    import kafka.record.default_records as records

    def missing(_data: bytes) -> bytes:
        raise UnsupportedCodecError("Libraries for snappy compression codec not found")

    worker_env.store().publish("A", artifact_v1, who="test")
    images = _bmp_images(line_data, tmp_path, 3)
    java_camera(worker_env, "snappy", images)
    _send(
        worker_env, [{"key": b"A", "value": images["cam-0"].read_bytes(), "headers": _id("plain")}]
    )
    monkeypatch.setattr(records, "snappy_decode", missing)
    worker = worker_env.start_thread_worker()
    try:
        results, dead = _outputs(worker_env, 4)
    finally:
        assert worker.stop() == 0
    assert set(results) == {"plain"}
    assert sorted(d["source"] for d in dead.values()) == [
        f"{worker_env.inspect}:0:{offset}" for offset in range(3)
    ]
    assert {d["error"] for d in dead.values()} == {"unreadable-record"}


def _series(registry: Any) -> int:
    from prometheus_client import generate_latest

    text = generate_latest(registry).decode()
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def _redis_calls(env: WorkerEnv) -> dict[str, int]:
    stats = env.store().client.info("commandstats")
    return {
        name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("get", "smembers")
    }


def test_invented_line_ids_leave_metrics_state_and_redis_reads_bounded(
    worker_env: WorkerEnv, artifact_v1: Path, line_data: Path
) -> None:
    worker_env.store().publish("A", artifact_v1, who="test")
    good = category_images(line_data)[0].read_bytes()
    worker = worker_env.start_thread_worker()
    n = 3000
    try:
        _send(worker_env, [{"key": b"A", "value": good, "headers": _id("first")}])
        _outputs(worker_env, 1)
        registry = worker.worker.ctx.metrics.registry
        series_before, calls_before = _series(registry), _redis_calls(worker_env)
        _send(worker_env, [{"key": f"junk-{i}".encode(), "value": b"x"} for i in range(n)])
        _send(worker_env, [{"key": b"A", "value": good, "headers": _id("last")}])
        results, dead = _outputs(worker_env, n + 2)
        series_after, calls_after = _series(registry), _redis_calls(worker_env)
        engine = worker.worker.engine
        held_state = (len(engine._loads), len(worker.worker.pipeline._unavailable_since))
    finally:
        assert worker.stop() == 0
    assert set(results) == {"first", "last"}
    assert len(dead) == n and {d["error"] for d in dead.values()} == {"unknown-line"}
    assert series_after - series_before < 40, (series_before, series_after)  # not ~2 per key
    assert held_state[0] <= 1 and held_state[1] == 0  # no lock or clock per invented key
    reads = {name: calls_after[name] - calls_before[name] for name in calls_after}
    assert reads["get"] < 50 and reads["smembers"] < 20, reads  # not one per record


def test_a_batch_whose_publishing_fails_part_way_gives_one_output_per_record(
    worker_env: WorkerEnv,
    artifact_v1: Path,
    line_data: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from memkd_stream.worker import pipeline

    real = pipeline.encode_result

    def fails_for_one(request: Any, **kwargs: Any) -> bytes:
        if request.id == "b-2":
            raise RuntimeError("the encoder broke on this one")
        return real(request, **kwargs)

    monkeypatch.setattr(pipeline, "encode_result", fails_for_one)
    worker_env.store().publish("A", artifact_v1, who="test")
    good = category_images(line_data)[0].read_bytes()
    # one batch (max_batch 4): the failure sits between results already sent and results to come
    _send(worker_env, [{"key": b"A", "value": good, "headers": _id(f"b-{i}")} for i in range(4)])
    worker = worker_env.start_thread_worker(MEMKD_WORKER__MAX_WAIT_MS="500")
    try:
        results, dead = _outputs(worker_env, 4)
    finally:
        assert worker.stop() == 0
    assert set(results) == {"b-0", "b-1", "b-3"}
    assert set(dead) == {"b-2"} and dead["b-2"]["error"] == "model-error"


def test_a_result_the_broker_refuses_mid_batch_becomes_that_records_dead_letter(
    worker_env: WorkerEnv, artifact_v1: Path, line_data: Path
) -> None:
    """The results topic takes less than the worker may send (a site's topic setting): the
    broker, not the client, refuses one result of a batch; that record alone is dead-lettered,
    and the worker goes on."""
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = make_admin(worker_env.settings().kafka, client_id="memkd-tests", timeout_s=30)
    try:
        admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC,
                    worker_env.results,
                    configs={"max.message.bytes": str(TOPIC_LIMIT)},
                )
            ]
        )
    finally:
        admin.close()
    worker_env.store().publish("A", artifact_v1, who="test")
    good = category_images(line_data)[0].read_bytes()
    bulky = [("note", b"n" * (TOPIC_LIMIT + 10_000))]  # passed through onto its result
    records = [{"key": b"A", "value": good, "headers": _id(f"r-{i}")} for i in range(4)]
    records[2]["headers"] = _id("r-2") + bulky
    _send(worker_env, records)
    worker = worker_env.start_thread_worker(MEMKD_WORKER__MAX_WAIT_MS="500")
    try:
        results, dead = _outputs(worker_env, 4)
        _send(worker_env, [{"key": b"A", "value": good, "headers": _id("r-after")}])
        after, _ = _outputs(worker_env, 5)
    finally:
        assert worker.stop() == 0  # never fatal
    assert set(results) == {"r-0", "r-1", "r-3"}
    assert set(dead) == {"r-2"}
    assert "r-after" in after

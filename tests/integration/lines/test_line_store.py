"""LineStore against the real Redis: versions, activation, rollback, retention, events, errors."""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
import tracemalloc

import pytest
import redis

from memkd_stream.contract.errors import BadLineId
from memkd_stream.contract.lateness import LatePolicy
from memkd_stream.lines.errors import (
    ArtifactRejected,
    ChecksumMismatch,
    NoRollbackTarget,
    StoreUnavailable,
    UnknownLine,
    UnknownVersion,
    VersionActive,
)
from memkd_stream.lines.store import LineStore

pytestmark = pytest.mark.integration


def _keys(client: redis.Redis, prefix: str) -> set[str]:
    return {k.decode() for k in client.scan_iter(match=prefix + "*")}


def test_publish_makes_a_verified_active_version(store, make_artifact, redis_client, redis_prefix):
    path = make_artifact(300_000, record={"model": {"backbone": "tf_efficientnet_lite0"}})
    data = path.read_bytes()

    version = store.publish("A", path, who="tester")

    assert version == 1
    assert store.current("A") == 1
    assert store.versions("A") == [1]
    assert store.lines() == ["A"]
    meta = store.meta("A", 1)
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()
    assert meta["size"] == len(data)
    assert meta["chunks"] == math.ceil(len(data) / (64 * 1024))
    assert meta["metadata"] == {"model": {"backbone": "tf_efficientnet_lite0"}}
    assert meta["published_by"] == "tester" and meta["source"] == path.name
    assert store.fetch_artifact("A", 1) == data
    [entry] = store.history("A")
    assert entry["version"] == 1 and entry["who"] == "tester" and entry["action"] == "publish"
    # Chunks are pending (TTL) only while uploading; a visible version's chunks never expire.
    chunk_keys = [k for k in _keys(redis_client, redis_prefix) if ":chunk:" in k]
    assert len(chunk_keys) == meta["chunks"]
    assert all(redis_client.ttl(k) == -1 for k in chunk_keys)


def test_publish_without_activation_keeps_the_current_version(store, make_artifact):
    store.publish("A", make_artifact())
    assert store.publish("A", make_artifact(), activate=False) == 2
    assert store.current("A") == 1
    assert store.versions("A") == [1, 2]
    assert len(store.history("A")) == 1


def test_activate_and_rollback_follow_the_history(store, make_artifact):
    for _ in range(3):
        store.publish("A", make_artifact())
    assert store.current("A") == 3

    assert store.rollback("A", who="op") == 2
    assert store.current("A") == 2
    # Rollback = the version active before the current one, so twice returns to the start.
    assert store.rollback("A", who="op") == 3
    store.activate("A", 1, who="op")
    store.activate("A", 1, who="op")  # re-activating the same version is not a new "previous"
    assert store.rollback("A", who="op") == 3

    history = store.history("A")
    assert [h["version"] for h in history] == [3, 1, 1, 3, 2, 3, 2, 1]
    assert [h["action"] for h in history[:3]] == ["rollback", "activate", "activate"]
    assert all(h["at"].endswith("Z") for h in history)


def test_rollback_without_an_earlier_activation_is_refused(store, make_artifact):
    store.publish("A", make_artifact())
    with pytest.raises(NoRollbackTarget) as err:
        store.rollback("A", who="op")
    assert err.value.code == "no-rollback-target"
    store.publish("A", make_artifact())
    store.delete("A", 1)
    with pytest.raises(NoRollbackTarget, match="was deleted"):
        store.rollback("A", who="op")
    assert store.current("A") == 2


def test_delete_refuses_the_current_version_and_removes_the_rest(
    store, make_artifact, redis_client, redis_prefix
):
    store.publish("A", make_artifact())
    store.publish("A", make_artifact())
    with pytest.raises(VersionActive) as err:
        store.delete("A", 2)
    assert err.value.code == "version-active"

    store.delete("A", 1)
    assert store.versions("A") == [2]
    assert not any(":v:1:" in k or k.endswith(":meta:1") for k in _keys(redis_client, redis_prefix))
    with pytest.raises(UnknownVersion):
        store.fetch_artifact("A", 1)
    with pytest.raises(UnknownVersion):
        store.delete("A", 1)
    # Numbers are never reused, even after deletes.
    assert store.publish("A", make_artifact()) == 3


def test_unknown_line_version_and_bad_ids_are_named(store, make_artifact):
    with pytest.raises(UnknownLine) as err:
        store.versions("nope")
    assert err.value.code == "unknown-line"
    assert "no lines are published yet" in str(err.value)
    assert store.current("nope") is None
    store.publish("A", make_artifact())
    with pytest.raises(UnknownLine, match="known lines: A"):
        store.meta("B", 1)
    with pytest.raises(UnknownVersion) as err:
        store.activate("A", 7, who="op")
    assert err.value.code == "unknown-version"
    assert "stored versions: 1" in str(err.value)
    with pytest.raises(BadLineId) as bad:
        store.publish("bad:id", make_artifact())
    assert bad.value.code == "bad-line-id"
    with pytest.raises(ArtifactRejected, match="does not exist"):
        store.publish("A", make_artifact().with_suffix(".nope"))


def test_a_file_that_is_not_an_artifact_is_refused_before_redis_is_touched(
    store, tmp_path, redis_client, redis_prefix
):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ArtifactRejected) as err:
        store.publish("A", junk)
    assert err.value.code == "artifact-invalid"
    assert _keys(redis_client, redis_prefix) == set()


def test_concurrent_publishers_never_share_a_version(redis_client, redis_prefix, make_artifact):
    paths = [make_artifact(20_000) for _ in range(6)]
    barrier = threading.Barrier(len(paths))
    got: list[int] = []
    errors: list[BaseException] = []

    def publish(path):
        store = LineStore(
            redis.Redis(connection_pool=redis_client.connection_pool),
            prefix=redis_prefix,
            chunk_bytes=4096,
            retention=50,
        )
        barrier.wait()
        try:
            for _ in range(3):
                got.append(store.publish("A", path, who=path.name))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert not errors
    assert sorted(got) == list(range(1, 19))
    store = LineStore(redis_client, prefix=redis_prefix, retention=50)
    assert store.versions("A") == list(range(1, 19))
    assert len(store.history("A")) == 18
    # Every version holds exactly the bytes of the file its publisher sent.
    by_name = {p.name: p.read_bytes() for p in paths}
    for v in store.versions("A"):
        assert store.fetch_artifact("A", v) == by_name[store.meta("A", v)["source"]]


def test_large_artifact_round_trips_in_chunks_without_being_held_whole(
    store, make_artifact, tmp_path
):
    path = make_artifact(5 * 1024 * 1024 + 123)
    data = path.read_bytes()
    size = len(data)
    del data

    tracemalloc.start()
    try:
        version = store.publish("big", path)
        _, publish_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        out = tmp_path / "fetched.safetensors"
        with out.open("wb") as fh:
            meta = store.fetch_artifact_to("big", version, fh)
        _, fetch_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert meta["chunks"] == math.ceil(size / (64 * 1024)) > 64
    assert out.read_bytes() == path.read_bytes()
    # Streaming: memory in use stays a few chunks, far below the artifact size.
    assert publish_peak < size / 8, publish_peak
    assert fetch_peak < size / 8, fetch_peak
    assert store.fetch_artifact("big", version) == path.read_bytes()

    target = tmp_path / "download.safetensors"
    store.download("big", version, target)
    assert target.read_bytes() == path.read_bytes()
    assert target.with_name(target.name + ".sha256").read_text().split()[0] == meta["sha256"]


def test_corrupt_or_missing_chunks_fail_the_checksum(
    store, make_artifact, redis_client, redis_prefix
):
    store.publish("A", make_artifact(200_000))
    key = f"{redis_prefix}line:A:v:1:chunk:1"
    original = redis_client.get(key)
    redis_client.set(key, original[:-1] + bytes([original[-1] ^ 0xFF]))
    with pytest.raises(ChecksumMismatch) as err:
        store.fetch_artifact("A", 1)
    assert err.value.code == "artifact-checksum"
    assert "A@1" in str(err.value)

    redis_client.delete(key)
    with pytest.raises(ChecksumMismatch, match="chunk 1 of 4 is missing"):
        store.fetch_artifact("A", 1)


def test_a_file_that_disagrees_with_its_sidecar_is_not_published(
    store, make_artifact, redis_client, redis_prefix
):
    path = make_artifact()
    path.with_name(path.name + ".sha256").write_text("0" * 64 + "  " + path.name + "\n")
    with pytest.raises(ChecksumMismatch, match="does not match its"):
        store.publish("A", path)
    # Only the version counter remains: no chunks, no meta, nothing listed.
    assert _keys(redis_client, redis_prefix) == {f"{redis_prefix}line:A:seq"}
    path.with_name(path.name + ".sha256").write_text(
        hashlib.sha256(path.read_bytes()).hexdigest() + "\n"
    )
    assert store.publish("A", path) == 2


def test_retention_keeps_newest_current_and_rollback_target(
    redis_client, redis_prefix, make_artifact
):
    store = LineStore(redis_client, prefix=redis_prefix, chunk_bytes=64 * 1024, retention=2)
    store.publish("A", make_artifact())  # v1 active
    for _ in range(4):
        store.publish("A", make_artifact(), activate=False)
    assert store.versions("A") == [1, 4, 5]  # newest two + current

    store.activate("A", 5, who="op")  # the rollback target is now 1
    store.publish("A", make_artifact(), activate=False)  # v6
    assert store.versions("A") == [1, 5, 6]
    assert store.rollback("A", who="op") == 1

    for _ in range(3):
        store.publish("A", make_artifact())  # 7, 8, 9, each activated
    assert store.versions("A") == [8, 9]
    leftover = [k for k in redis_client.scan_iter(match=f"{redis_prefix}line:A:v:*")]
    assert {k.decode().split(":v:")[1].split(":")[0] for k in leftover} == {"8", "9"}


def test_each_activation_publishes_one_event(store, make_artifact, redis_client):
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(store.events_channel)
    try:
        assert pubsub.get_message(timeout=1.0) is None  # subscribed
        store.publish("A", make_artifact())
        store.publish("A", make_artifact(), activate=False)
        store.activate("A", 2, who="op")
        store.rollback("A", who="op")
        events = []
        deadline = time.monotonic() + 5
        while len(events) < 3 and time.monotonic() < deadline:
            msg = pubsub.get_message(timeout=0.5)
            if msg:
                events.append(json.loads(msg["data"]))
        time.sleep(0.2)
        assert pubsub.get_message(timeout=0.2) is None
    finally:
        pubsub.close()
    assert events == [
        {"line": "A", "version": 1, "action": "publish"},
        {"line": "A", "version": 2, "action": "activate"},
        {"line": "A", "version": 1, "action": "rollback"},
    ]


def test_late_policy_overrides_are_line_keys_with_an_event(
    store, make_artifact, redis_client, redis_prefix
):
    store.publish("A", make_artifact())
    store.publish("B", make_artifact(), activate=False)
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(store.events_channel)
    try:
        assert pubsub.get_message(timeout=1.0) is None  # subscribed
        store.set_late_policy("A", LatePolicy.DEAD_LETTER)
        store.set_late_policy("B", LatePolicy.SCORE)
        events = []
        deadline = time.monotonic() + 5
        while len(events) < 2 and time.monotonic() < deadline:
            msg = pubsub.get_message(timeout=0.5)
            if msg:
                events.append(json.loads(msg["data"]))
    finally:
        pubsub.close()
    assert events == [
        {"line": "A", "version": 1, "action": "late-policy"},
        {"line": "B", "version": None, "action": "late-policy"},  # B has no active version
    ]
    assert redis_client.get(f"{redis_prefix}line:A:late_policy") == b"dead-letter"
    assert store.late_policy("A") is LatePolicy.DEAD_LETTER
    assert store.late_policies(["A", "B", "C"]) == {
        "A": LatePolicy.DEAD_LETTER,
        "B": LatePolicy.SCORE,
    }
    store.set_late_policy("B", None)
    assert store.late_policy("B") is None
    redis_client.set(f"{redis_prefix}line:B:late_policy", b"maybe")  # not ours: no override
    assert store.late_policies(["A", "B"]) == {"A": LatePolicy.DEAD_LETTER}
    assert store.late_policies([]) == {}
    with pytest.raises(UnknownLine, match="nope"):
        store.set_late_policy("nope", LatePolicy.SCORE)
    assert redis_client.get(f"{redis_prefix}line:nope:late_policy") is None


def test_unreachable_redis_is_one_clear_error_in_bounded_time():
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1, socket_timeout=1)
    store = LineStore(client)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as err:
        store.lines()
    assert time.monotonic() - started < 10
    assert err.value.code == "redis-unavailable"
    assert str(err.value).startswith("Redis at redis://127.0.0.1:1/0 is unreachable")


class _FailingClient:
    """Delegates to a real client; the Nth chunk SET raises (a publisher dying mid-upload)."""

    def __init__(self, client: redis.Redis, fail_at: int, seen_ttls: list[int]) -> None:
        self._client, self._fail_at, self._ttls, self._sets = client, fail_at, seen_ttls, 0

    def set(self, name, value, **kwargs):
        self._sets += 1
        if self._sets > 1:  # the previous chunk is pending: it carries a TTL
            previous = name.rsplit(":", 1)[0] + f":{self._sets - 2}"
            self._ttls.append(self._client.ttl(previous))
        if self._sets == self._fail_at:
            raise KeyboardInterrupt  # even an interrupt must not leave a half version
        return self._client.set(name, value, **kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_an_interrupted_upload_leaves_no_version_and_no_chunks(
    redis_client, redis_prefix, make_artifact
):
    ttls: list[int] = []
    failing = _FailingClient(redis_client, fail_at=3, seen_ttls=ttls)
    store = LineStore(failing, prefix=redis_prefix, chunk_bytes=64 * 1024)  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        store.publish("A", make_artifact(300_000))
    assert ttls and all(t > 0 for t in ttls)
    assert _keys(redis_client, redis_prefix) == {f"{redis_prefix}line:A:seq"}
    assert store.lines() == [] and store.current("A") is None

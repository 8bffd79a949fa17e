"""LineStore lineage against the real Redis: deltas and their parents, shadows, history reasons.

The artifacts are hand-made safetensors files whose records say "delta of sha256 X" (the store
reads records, never tensors), so no test here trains anything.
"""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from memkd_stream.lines.activation import ActivationReason
from memkd_stream.lines.errors import (
    ArtifactRejected,
    ParentNeeded,
    ShadowRefused,
    UnknownVersion,
)
from memkd_stream.lines.store import LineStore

pytestmark = pytest.mark.integration

INPUT = {
    "teacher": {"name": "tf_efficientnet_lite0", "fingerprint": "f"},
    "input_size": 64,
    "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3},
    "roi": None,
}


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def full(make_artifact):
    return lambda **change: make_artifact(record={"kind": "memkd-line-model", **INPUT, **change})


@pytest.fixture
def delta(make_artifact):
    def make(parent_path, version=None, **change):
        parent = {"sha256": _sha(parent_path), "version": version, "line": "A"}
        record = {"kind": "memkd-line-delta", "parent": parent, **INPUT, **change}
        return make_artifact(20_000, record=record)

    return make


def test_a_delta_records_its_parent_and_deleting_that_parent_is_refused(store, full, delta):
    parent_file = full()
    assert store.publish("A", parent_file) == 1
    assert store.publish("A", delta(parent_file, version=1)) == 2
    assert store.meta("A", 2)["parent"] == 1 and store.meta("A", 1)["parent"] is None
    with pytest.raises(ParentNeeded, match="A@1 is the full parent of A@2") as err:
        store.delete("A", 1)
    assert err.value.code == "parent-needed"
    store.publish("A", delta(parent_file, version=1))  # v3, active: v2 is now deletable
    store.delete("A", 2)
    with pytest.raises(ParentNeeded, match="of A@3"):
        store.delete("A", 1)
    assert store.versions("A") == [1, 3]


def test_a_delta_finds_its_parent_by_sha256_and_refuses_a_missing_one(store, full, delta):
    parent_file = full()
    store.publish("A", full())  # v1, another full artifact
    store.publish("A", parent_file)  # v2
    offline = delta(parent_file)  # names no version: found by its sha256
    assert store.meta("A", store.publish("A", offline))["parent"] == 2
    wrong_version = delta(parent_file, version=1)  # names v1, but v1 has other bytes
    assert store.meta("A", store.publish("A", wrong_version))["parent"] == 2
    stranger = delta(full())
    with pytest.raises(ArtifactRejected, match="not stored in line A"):
        store.publish("A", stranger)
    with pytest.raises(ArtifactRejected, match="not stored in line B"):
        store.publish("B", offline)
    assert store.versions("A") == [1, 2, 3, 4]


def test_retention_keeps_the_parent_of_every_kept_version(redis_client, redis_prefix, full, delta):
    store = LineStore(redis_client, prefix=redis_prefix, chunk_bytes=64 * 1024, retention=2)
    parent_file = full()
    store.publish("A", parent_file)  # v1, the parent
    for _ in range(4):  # v2..v5: deltas of v1, each activated
        store.publish("A", delta(parent_file, version=1))
    store.publish("A", full(), activate=False)  # v6
    # newest 2 (5, 6), current 5, rollback target 4, and 1: the parent of 4 and 5
    assert store.versions("A") == [1, 4, 5, 6]


def test_a_shadow_is_set_ended_by_activation_and_by_rollback(store, full, delta, redis_client):
    parent_file = full()
    store.publish("A", parent_file)
    store.publish("A", delta(parent_file, version=1), activate=False)  # v2
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(store.events_channel)
    try:
        assert pubsub.get_message(timeout=1.0) is None
        store.set_shadow("A", 2)
        assert store.shadow("A") == 2
        event = _next_event(pubsub)
        assert event == {"line": "A", "version": 2, "action": "shadow"}
    finally:
        pubsub.close()
    store.activate("A", 2, who="op")  # trying it out is over once it is active
    assert store.shadow("A") is None
    store.set_shadow("A", 1)
    store.rollback("A", who="op")
    assert store.current("A") == 1 and store.shadow("A") is None
    store.set_shadow("A", 2)
    store.set_shadow("A", None)
    assert store.shadow("A") is None


def test_a_shadow_must_share_the_active_input_and_not_be_active(store, full):
    store.publish("A", full())
    store.publish("A", full(input_size=128), activate=False)  # v2
    with pytest.raises(ShadowRefused, match="input size 64 vs 128") as err:
        store.set_shadow("A", 2)
    assert err.value.code == "shadow-refused"
    with pytest.raises(ShadowRefused, match="cannot shadow itself"):
        store.set_shadow("A", 1)
    with pytest.raises(UnknownVersion):
        store.set_shadow("A", 9)
    assert store.shadow("A") is None


def test_history_says_why_and_notes_are_kept(store, full):
    store.publish("A", full(), reason=ActivationReason.FIRST_VERSION)
    store.publish("A", full(), reason=ActivationReason.GATE_PASSED, notes={"gate": {"ok": 1}})
    store.activate("A", 1, who="op")
    store.rollback("A", who="op")
    reasons = [(h["version"], h["action"], h["reason"]) for h in store.history("A")]
    assert reasons == [
        (2, "rollback", "rollback"),
        (1, "activate", "operator"),
        (2, "publish", "gate-passed"),
        (1, "publish", "first-version"),
    ]
    assert store.meta("A", 2)["notes"] == {"gate": {"ok": 1}} and store.meta("A", 1)["notes"] == {}


def _next_event(pubsub) -> dict:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=0.5)
        if msg:
            return json.loads(msg["data"])
    raise AssertionError("no event")

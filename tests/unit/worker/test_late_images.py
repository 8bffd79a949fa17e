"""The age check before a batch: late images are marked or dead-lettered `stale` by their line's
policy, both counted; nothing is judged while worker.max_age_ms is off."""

from __future__ import annotations

from typing import Any

from kafka import TopicPartition

from memkd_stream.contract.codes import DeadLetterCode
from memkd_stream.contract.headers import HEADER_SENT_AT
from memkd_stream.contract.lateness import LatePolicy
from memkd_stream.contract.request import parse_request
from memkd_stream.log import get_logger
from memkd_stream.settings import Settings, WorkerSettings
from memkd_stream.worker.context import WorkerContext
from memkd_stream.worker.health import Heartbeats
from memkd_stream.worker.late_images import LateImages
from memkd_stream.worker.late_policies import LatePolicies
from memkd_stream.worker.metrics import WorkerMetrics
from memkd_stream.worker.offsets import OffsetTracker
from memkd_stream.worker.run_state import RunState
from memkd_stream.worker.work_item import WorkItem

NOW = 1_700_000_000.0
TP = TopicPartition("in", 0)


class Sink:
    def __init__(self) -> None:
        self.dead: list[tuple[str, DeadLetterCode, str]] = []

    def dead_letter(self, item: WorkItem, code: DeadLetterCode, detail: str) -> None:
        assert item.request is not None
        self.dead.append((item.request.id, code, detail))


def _ctx(**worker: Any) -> WorkerContext:
    return WorkerContext(
        settings=Settings(worker=WorkerSettings(**worker)),
        metrics=WorkerMetrics(),
        tracker=OffsetTracker(),
        state=RunState(),
        heartbeats=Heartbeats(),
        log=get_logger(__name__),
    )


def _item(image_id: str, line: str, age_s: float, *, header: bool = True) -> WorkItem:
    """A request sent ``age_s`` ago: by its memkd-sent-at header, or only by its timestamp."""
    sent_ms = int((NOW - age_s) * 1000)
    headers = [("memkd-id", image_id.encode())]
    if header:
        headers.append((HEADER_SENT_AT, str(sent_ms).encode()))
    else:
        headers.append((HEADER_SENT_AT, b"not-a-time"))  # malformed: the timestamp stands in
    request = parse_request(
        "in", 0, 0, line.encode(), b"img", headers, received_at=NOW, timestamp_ms=sent_ms
    )
    return WorkItem(TP, 0, 0, line.encode(), b"img", headers, request=request)


def test_nothing_is_judged_while_max_age_is_off() -> None:
    ctx, sink = _ctx(), Sink()
    gate = LateImages(ctx, LatePolicies(LatePolicy.DEAD_LETTER), sink, clock=lambda: NOW)  # type: ignore[arg-type]
    ancient = _item("old", "A", age_s=86_400)
    assert gate.admit([ancient]) == [ancient]
    assert ancient.late_ms is None and sink.dead == []


def test_late_images_follow_their_lines_policy_and_are_counted() -> None:
    ctx, sink = _ctx(max_age_ms=5_000, clock_skew_ms=1_000), Sink()
    policies = LatePolicies(LatePolicy.SCORE)
    policies.set("B", LatePolicy.DEAD_LETTER)
    gate = LateImages(ctx, policies, sink, clock=lambda: NOW)  # type: ignore[arg-type]
    fresh = _item("fresh", "A", age_s=1)
    skewed = _item("skewed", "A", age_s=5.5)  # within the margin
    late_a = _item("late-a", "A", age_s=20)
    late_a_by_timestamp = _item("late-a-ts", "A", age_s=30, header=False)
    late_b = _item("late-b", "B", age_s=20)
    fresh_b = _item("fresh-b", "B", age_s=0.5)

    kept = gate.admit([fresh, skewed, late_a, late_a_by_timestamp, late_b, fresh_b])

    assert [i.request.id for i in kept if i.request] == [
        "fresh", "skewed", "late-a", "late-a-ts", "fresh-b",
    ]  # fmt: skip
    assert fresh.late_ms is None and skewed.late_ms is None and fresh_b.late_ms is None
    assert late_a.late_ms == 15_000
    assert late_a_by_timestamp.late_ms == 25_000
    assert [(image_id, code) for image_id, code, _ in sink.dead] == [
        ("late-b", DeadLetterCode.STALE)
    ]
    assert "worker.max_age_ms=5000" in sink.dead[0][2]
    count = ctx.metrics.registry.get_sample_value
    assert count("memkd_late_images_total", {"line": "A", "policy": "score"}) == 2
    assert count("memkd_late_images_total", {"line": "B", "policy": "dead-letter"}) == 1


def test_an_override_read_later_replaces_the_old_ones() -> None:
    policies = LatePolicies(LatePolicy.SCORE)
    policies.replace({"A": LatePolicy.DEAD_LETTER, "B": LatePolicy.DEAD_LETTER})
    policies.set("A", None)  # cleared, as its event says
    assert policies.policy("A") is LatePolicy.SCORE
    assert policies.policy("B") is LatePolicy.DEAD_LETTER
    policies.replace({})  # a full re-read finds none
    assert policies.policy("B") is LatePolicy.SCORE and policies.overrides() == {}

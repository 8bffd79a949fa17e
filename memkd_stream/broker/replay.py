"""Replaying dead letters (DESIGN.md §3-§4): one pass over a fixed window of the dead-letter
topic, re-producing the matching records to the inspect topic.

The window is fixed when the pass starts: from ``since`` (or the beginning) to the end offsets
read then, so the dead letters that replayed records may cause land after it and are not read
again in this pass. Each matching dead letter is judged by ``contract.replay.plan_replay`` and
either re-produced once (a new request, with its original id and a bounded replay count) or
listed with the reason it stays. Reading joins no consumer group and commits nothing; producing
uses the ``acks=all`` producer of ``broker.clients``, and the pass waits for every
acknowledgement, so a record reported replayed is on the inspect topic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from memkd_stream.broker.clients import make_producer, make_reader, timeout_ms
from memkd_stream.broker.errors import connect_failure, unavailable
from memkd_stream.broker.topics import broker_topics, require_topic
from memkd_stream.contract.headers import HEADER_ERROR, HEADER_ID, HEADER_SOURCE, Headers
from memkd_stream.contract.replay import NotReplayable, Replay, plan_replay, replay_count
from memkd_stream.errors import MemkdStreamError

if TYPE_CHECKING:
    from kafka.producer.future import FutureRecordMetadata

    from memkd_stream.settings import KafkaSettings

__all__ = ["ReplayReport", "replay_dead_letters"]

_POLL_MS = 200


@dataclass
class ReplayReport:
    """What one pass did: the window it read, and one row per matching dead letter."""

    dlq_topic: str
    inspect_topic: str
    dry_run: bool
    since_ms: int | None
    window: dict[int, tuple[int, int]]  # partition -> (first offset read, end offset at start)
    scanned: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def replayed(self) -> int:
        return sum(row["action"] in ("replayed", "would-replay") for row in self.rows)

    @property
    def skipped(self) -> int:
        return sum(row["action"] == "skipped" for row in self.rows)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dlq_topic": self.dlq_topic,
            "inspect_topic": self.inspect_topic,
            "dry_run": self.dry_run,
            "since_ms": self.since_ms,
            "window": {str(p): {"from": a, "to": b} for p, (a, b) in sorted(self.window.items())},
            "scanned": self.scanned,
            "matched": len(self.rows),
            "replayed": self.replayed,
            "skipped": self.skipped,
            "records": self.rows,
        }


def replay_dead_letters(
    kafka: KafkaSettings,
    *,
    codes: Collection[str] = (),
    line: str | None = None,
    since_ms: int | None = None,
    dry_run: bool = False,
    connect_timeout_s: float = 10.0,
) -> ReplayReport:
    """One pass over the dead-letter topic: replay (or, with ``dry_run``, only judge) the dead
    letters whose code is in ``codes`` (any when empty), whose key is ``line`` (any when None)
    and that were dead-lettered at or after ``since_ms``.

    Raises:
        TopicMissing: the dead-letter or the inspect topic does not exist.
        KafkaUnavailable / KafkaRefused: the broker does not answer, or refuses us; when that
            happens while producing, the message says how many records were replayed before.
        MemkdStreamError: the broker refused a replayed record (the same count is given).
    """
    topics = broker_topics(kafka, connect_timeout_s)
    require_topic(kafka, kafka.dlq_topic, topics, "dead letters")
    require_topic(kafka, kafka.inspect_topic, topics, "inspect")
    reader = _connect(
        kafka, connect_timeout_s, lambda: make_reader(kafka, timeout_s=connect_timeout_s)
    )
    producer: KafkaProducer | None = None
    pending: list[tuple[dict[str, Any], FutureRecordMetadata]] = []
    try:
        window = _fix_window(reader, kafka.dlq_topic, since_ms)
        report = ReplayReport(kafka.dlq_topic, kafka.inspect_topic, dry_run, since_ms, window)
        if not dry_run:
            ms = timeout_ms(connect_timeout_s)
            producer = _connect(
                kafka,
                connect_timeout_s,
                lambda: make_producer(kafka, bootstrap_timeout_ms=ms, max_block_ms=ms),
            )
        stall_s = connect_timeout_s + kafka.request_timeout_ms / 1000
        for record in _read(reader, kafka, window, stall_s):
            report.scanned += 1
            headers: Headers = [
                (k, b"" if v is None else bytes(v)) for k, v in record.headers or ()
            ]
            if not _matches(record.key, headers, codes, line):
                continue
            plan = plan_replay(record.key, record.value, headers)
            row = _row(record.partition, record.offset, record.key, headers, plan, dry_run)
            report.rows.append(row)
            if isinstance(plan, Replay) and producer is not None:
                future = producer.send(
                    kafka.inspect_topic, key=plan.key, value=plan.value, headers=plan.headers
                )
                pending.append((row, future))
        if producer is not None:
            _await_acks(kafka, producer, pending, connect_timeout_s)
        return report
    except Exception as exc:
        failure = connect_failure(kafka.bootstrap_servers, connect_timeout_s, exc)
        if failure is None and isinstance(exc, KafkaError):  # the broker refused a record
            failure = MemkdStreamError(f"the broker refused a replayed record: {exc!r}")
        if failure is None:
            raise
        done = sum(1 for row, _ in pending if row.get("to"))
        if pending:
            raise type(failure)(
                f"{failure} ({done} of {len(pending)} replayed records were acknowledged before "
                "it; a second pass over the same window would replay those again)"
            ) from exc
        raise failure from exc
    finally:
        reader.close()
        if producer is not None:
            producer.close(timeout=5)


def _connect(kafka: KafkaSettings, timeout_s: float, make: Callable[[], Any]) -> Any:
    try:
        return make()
    except Exception as exc:
        failure = connect_failure(kafka.bootstrap_servers, timeout_s, exc)
        if failure is None:
            raise
        raise failure from exc


def _fix_window(
    reader: KafkaConsumer, topic: str, since_ms: int | None
) -> dict[int, tuple[int, int]]:
    """Each partition's (start, end): the end offsets now, the start at ``since_ms`` (the first
    record at or after it) or at the beginning."""
    partitions = sorted(reader.partitions_for_topic(topic) or ())
    tps = [TopicPartition(topic, p) for p in partitions]
    if not tps:
        return {}
    ends = reader.end_offsets(tps)
    starts = reader.beginning_offsets(tps)
    if since_ms is not None:
        found = reader.offsets_for_times({tp: since_ms for tp in tps})
        starts = {tp: (found[tp].offset if found.get(tp) else ends[tp]) for tp in tps}
    return {tp.partition: (min(starts[tp], ends[tp]), ends[tp]) for tp in tps}


def _read(
    reader: KafkaConsumer, kafka: KafkaSettings, window: dict[int, tuple[int, int]], stall_s: float
) -> Iterator[Any]:
    """The dead letters of the window, in offset order within each partition. Raises
    KafkaUnavailable when nothing more arrives for ``stall_s`` (the broker went away)."""
    todo = {
        TopicPartition(kafka.dlq_topic, p): span for p, span in window.items() if span[0] < span[1]
    }
    if not todo:
        return
    reader.assign(list(todo))
    for tp, (start, _) in todo.items():
        reader.seek(tp, start)
    progress = time.monotonic()
    while todo:
        for tp, records in reader.poll(timeout_ms=_POLL_MS).items():
            end = todo.get(tp, (0, 0))[1]
            progress = time.monotonic()
            for record in records:
                if record.offset < end:
                    yield record
        for tp in list(todo):
            if reader.position(tp) >= todo[tp][1]:
                del todo[tp]
                reader.pause(tp)
        if todo and time.monotonic() - progress > stall_s:
            where = ", ".join(f"{tp.partition}" for tp in sorted(todo))
            stalled = TimeoutError(f"no dead letters arrived from partitions {where}")
            raise unavailable(kafka.bootstrap_servers, stall_s, stalled)


def _header(headers: Headers, name: str) -> str | None:
    found = [raw for header, raw in headers if header.lower() == name]
    return found[0].decode("utf-8", errors="replace") if found else None


def _matches(key: bytes | None, headers: Headers, codes: Collection[str], line: str | None) -> bool:
    if codes and _header(headers, HEADER_ERROR) not in codes:
        return False
    return line is None or key == line.encode("utf-8")


def _row(
    partition: int,
    offset: int,
    key: bytes | None,
    headers: Headers,
    plan: Replay | NotReplayable,
    dry_run: bool,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "dlq": f"{partition}:{offset}",
        "id": plan.id if isinstance(plan, Replay) else _header(headers, HEADER_ID),
        "line": None if key is None else key.decode("utf-8", errors="replace"),
        "code": _header(headers, HEADER_ERROR),
        "source": _header(headers, HEADER_SOURCE),
        "replay_count": replay_count(headers),
    }
    if isinstance(plan, Replay):
        row["action"] = "would-replay" if dry_run else "replayed"
        row["replay_count"] = plan.count
    else:
        row.update(action="skipped", reason=plan.reason.value, detail=plan.detail)
    return row


def _await_acks(
    kafka: KafkaSettings,
    producer: KafkaProducer,
    pending: list[tuple[dict[str, Any], FutureRecordMetadata]],
    timeout_s: float,
) -> None:
    """Wait until the broker has every replayed record; note where each landed."""
    producer.flush(timeout=float(kafka.request_timeout_ms) / 1000 + timeout_s)
    failed: BaseException | None = None
    for row, future in pending:
        try:
            metadata = future.get(timeout=1)
        except Exception as exc:
            failed = failed or exc
            continue
        row["to"] = f"{metadata.partition}:{metadata.offset}"
    if failed is not None:
        raise failed

"""The results reader: what workers published on the results or dead-letter topic.

Reads without a consumer group (nothing is committed, nothing is taken from the workers). A
result comes back as its JSON document plus its Kafka headers; a dead letter as the fields of
its headers (the image it carries is of no use on a terminal), with ``replay_count`` (how often
``dlq replay`` sent it back already); both with ``kafka``: where the record itself sits
(partition, offset) and when it was produced (``timestamp_ms``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kafka import TopicPartition

from memkd_stream.broker.clients import make_reader
from memkd_stream.broker.errors import connect_failure
from memkd_stream.broker.topics import require_topic as _require_topic
from memkd_stream.contract.headers import (
    HEADER_ERROR,
    HEADER_ERROR_DETAIL,
    HEADER_ID,
    HEADER_SOURCE,
)
from memkd_stream.contract.replay import replay_count

if TYPE_CHECKING:
    from memkd_stream.settings import KafkaSettings

__all__ = ["parse_record", "read_results"]


def read_results(
    kafka: KafkaSettings,
    *,
    topic: str,
    follow: bool,
    from_beginning: bool,
    line: str | None = None,
    max_records: int | None = None,
    timeout_s: float | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    require_topic: bool = False,
    connect_timeout_s: float | None = None,
) -> list[dict[str, Any]]:
    """Read ``topic`` and return its records parsed by :func:`parse_record`.

    Without ``follow``: what is there now (up to the end offsets at the start), then return.
    A missing topic reads as empty unless ``require_topic`` (then TopicMissing);
    ``connect_timeout_s`` bounds the wait for the broker (then KafkaUnavailable)."""
    try:
        consumer = make_reader(kafka, timeout_s=connect_timeout_s)
    except Exception as exc:
        if connect_timeout_s is None:
            raise
        failure = connect_failure(kafka.bootstrap_servers, connect_timeout_s, exc)
        if failure is None:
            raise
        raise failure from exc
    out: list[dict[str, Any]] = []
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            if require_topic:
                _require_topic(kafka, topic, set())
            return out
        consumer.assign(tps)
        if follow and not from_beginning:
            consumer.seek_to_end(*tps)
        else:
            consumer.seek_to_beginning(*tps)
        ends = None if follow else consumer.end_offsets(tps)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if max_records is not None and len(out) >= max_records:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            if ends is not None and all(consumer.position(tp) >= ends[tp] for tp in tps):
                break
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    key = record.key.decode("utf-8", "replace") if record.key else None
                    if line is not None and key != line:
                        continue
                    doc = parse_record(record.value, record.headers, key)
                    doc["kafka"] = {
                        "partition": record.partition,
                        "offset": record.offset,
                        "timestamp_ms": record.timestamp,
                    }
                    out.append(doc)
                    if on_record is not None:
                        on_record(doc)
                    if max_records is not None and len(out) >= max_records:
                        break
    finally:
        consumer.close()
    return out


def parse_record(
    value: bytes | None, headers: list[tuple[str, bytes]] | None, key: str | None
) -> dict[str, Any]:
    """A result's JSON with its headers under ``"headers"``, or a dead letter's fields."""
    texts = {k: (v or b"").decode("utf-8", "replace") for k, v in (headers or [])}
    try:
        doc = json.loads(value) if value else None
    except (ValueError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict) or "schema" not in doc:
        return {
            "id": texts.get(HEADER_ID, texts.get(HEADER_SOURCE)),
            "line": key,
            "error": texts.get(HEADER_ERROR),
            "detail": texts.get(HEADER_ERROR_DETAIL),
            "source": texts.get(HEADER_SOURCE),
            "replay_count": replay_count([(k, v or b"") for k, v in headers or []]),
            "headers": texts,
        }
    doc["headers"] = texts
    return doc

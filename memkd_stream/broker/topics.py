"""Create the three topics of DESIGN.md §1 with the size limit the worker relies on.

The inspect topic carries raw images, so its ``max.message.bytes`` must match the producer's
``max_request_size`` and the consumer's fetch size (all from ``kafka.max_message_bytes``);
results and dead letters get the same limit because a dead letter re-publishes the image.
Creation is idempotent: a topic that already exists is reported, never altered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kafka.errors import TopicAlreadyExistsError

from memkd_stream.broker.clients import make_admin

__all__ = ["TopicStatus", "ensure_topics", "topic_names"]


@dataclass(frozen=True)
class TopicStatus:
    name: str
    partitions: int
    created: bool


def topic_names(kafka: Any) -> list[str]:
    return [kafka.inspect_topic, kafka.results_topic, kafka.dlq_topic]


def ensure_topics(
    kafka: Any,
    partitions: int | None = None,
    names: list[str] | None = None,
    replication_factor: int | None = None,
) -> list[TopicStatus]:
    """Create the inspect/results/dlq topics (or ``names``) when missing."""
    names = names or topic_names(kafka)
    parts = int(partitions if partitions is not None else kafka.partitions)
    replicas = int(
        replication_factor if replication_factor is not None else kafka.replication_factor
    )
    admin = make_admin(kafka)
    try:
        existing = set(admin.list_topics())
        wanted = {
            name: {
                "num_partitions": parts,
                "replication_factor": replicas,
                "configs": {"max.message.bytes": str(int(kafka.max_message_bytes))},
            }
            for name in names
            if name not in existing
        }
        created: set[str] = set()
        for name, options in wanted.items():
            try:
                admin.create_topics({name: options}, wait_for_metadata=True)
                created.add(name)
            except TopicAlreadyExistsError:
                pass  # created concurrently by someone else: fine
        out = []
        for meta in admin.describe_topics(names):
            name = str(meta.get("name") or meta.get("topic"))
            out.append(TopicStatus(name, len(meta.get("partitions") or []), name in created))
        return sorted(out, key=lambda s: names.index(s.name) if s.name in names else 99)
    finally:
        admin.close()

"""The three topics of DESIGN.md §1: create them with the size limit the worker relies on, and
ask the broker which topics exist (quickly, with a clear error when it does not answer).

The inspect topic carries raw images, so its ``max.message.bytes`` must match the producer's
``max_request_size`` and the consumer's fetch size (all from ``kafka.max_message_bytes``);
results and dead letters get the same limit because a dead letter re-publishes the image.
Creation is idempotent: a topic that already exists is reported, never altered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kafka.errors import TopicAlreadyExistsError

from memkd_stream.broker.clients import make_admin
from memkd_stream.broker.errors import TopicMissing, connect_failure

if TYPE_CHECKING:
    from memkd_stream.settings import KafkaSettings

__all__ = ["TopicStatus", "broker_topics", "ensure_topics", "require_topic", "topic_names"]


@dataclass(frozen=True)
class TopicStatus:
    name: str
    partitions: int
    created: bool


def topic_names(kafka: KafkaSettings) -> list[str]:
    return [kafka.inspect_topic, kafka.results_topic, kafka.dlq_topic]


def broker_topics(kafka: KafkaSettings, timeout_s: float) -> set[str]:
    """The broker's topic names, asked with a short timeout (raises KafkaUnavailable)."""
    try:
        admin = make_admin(kafka, client_id=f"{kafka.client_id}-cli", timeout_s=timeout_s)
    except Exception as exc:
        failure = connect_failure(kafka.bootstrap_servers, timeout_s, exc)
        if failure is None:
            raise
        raise failure from exc
    try:
        return set(admin.list_topics())
    except Exception as exc:
        failure = connect_failure(kafka.bootstrap_servers, timeout_s, exc)
        if failure is None:
            raise
        raise failure from exc
    finally:
        admin.close()


def require_topic(kafka: KafkaSettings, topic: str, topics: set[str], what: str = "") -> None:
    """Raise TopicMissing (naming the command that creates it) unless ``topic`` is in ``topics``."""
    if topic not in topics:
        name = f"{topic} ({what})" if what else topic
        raise TopicMissing(
            f"topic {name} does not exist on {kafka.bootstrap_servers}; "
            "create it with: memkd-stream topics create"
        )


def ensure_topics(
    kafka: KafkaSettings,
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

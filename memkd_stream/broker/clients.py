"""kafka-python clients configured for the worker's delivery contract (DESIGN.md §4).

One place decides how the consumer, producer and admin client talk to the broker, so the
settings that make the contract hold are not scattered:

- consumer: auto-commit off (the worker commits only acknowledged prefixes), ``earliest`` reset
  (a new group starts at the first image, nothing is skipped), fetch sizes at least the
  broker's ``max.message.bytes`` (else a large image blocks its partition forever), and the
  cooperative sticky assignor (KIP-429, supported by kafka-python >= 2.3): a rebalance only
  revokes the partitions that actually move, so the other partitions keep flowing.
- group-less reader (``make_reader``): what ``results`` and the tests read topics with; it
  joins no group and commits nothing, so it takes nothing from the workers.
- producer: ``acks=all``, one request in flight per broker (a retry never reorders results),
  ``max_request_size`` matched to the topic limit, and a delivery timeout equal to the broker
  unreachable budget: a result that cannot be delivered within it fails, and the worker exits
  without committing it. Not idempotent: kafka-python 3.0's idempotent producer turns any
  non-retriable broker error on one record (a results topic whose ``max.message.bytes`` is
  smaller than ours) into a fatal state that fails every later send, so one record would stop
  the worker and, after each restart, every worker that takes its partition. Without it the
  broker's refusal fails that record alone (the sink dead-letters it); the price is that a
  retry after a lost acknowledgement can duplicate a result, which at-least-once allows
  (same id, same source).

Threading (kafka-python 3.x): each client drives its own IO thread. Rebalance listener
callbacks run on the *consumer's* IO thread while ``poll()`` waits for them, so they must not
call the blocking consumer API (it raises); see ``rebalance.RebalanceHandler``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor

if TYPE_CHECKING:
    from memkd_stream.settings import KafkaSettings

__all__ = [
    "ASSIGNOR",
    "connection_kwargs",
    "make_admin",
    "make_consumer",
    "make_producer",
    "make_reader",
    "timeout_ms",
]

ASSIGNOR = CooperativeStickyAssignor

# Headroom for record and batch headers on top of the image bytes.
_FRAME_OVERHEAD = 1024 * 1024


def connection_kwargs(kafka: KafkaSettings) -> dict[str, Any]:
    """Bootstrap, security and timeout kwargs common to every kafka-python client."""
    kwargs: dict[str, Any] = dict(kafka.client_kwargs())
    kwargs.setdefault("bootstrap_servers", kafka.bootstrap_servers)
    kwargs.setdefault("request_timeout_ms", int(kafka.request_timeout_ms))
    # kafka-python backs off up to 30 s between reconnects by default: a broker back after an
    # outage went unnoticed for that long (once past the unreachable budget).
    kwargs.setdefault("reconnect_backoff_max_ms", kafka.reconnect_backoff_max_ms)
    return kwargs


def _fetch_bytes(kafka: KafkaSettings) -> int:
    """Fetch sizes at least ``max.message.bytes`` plus framing, else a large image blocks its
    partition forever."""
    return int(kafka.max_message_bytes) + _FRAME_OVERHEAD


def make_consumer(
    kafka: KafkaSettings,
    *,
    topics: list[str] | None = None,
    group_id: str | None = None,
    client_id: str | None = None,
    max_poll_records: int = 256,
    **overrides: Any,
) -> KafkaConsumer:
    """A group consumer for ``topics`` (subscribe later when None) with manual commits."""
    fetch_bytes = _fetch_bytes(kafka)
    config: dict[str, Any] = connection_kwargs(kafka)
    config.update(
        group_id=group_id if group_id is not None else kafka.group_id,
        client_id=client_id or kafka.client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        partition_assignment_strategy=[ASSIGNOR],
        max_partition_fetch_bytes=fetch_bytes,
        fetch_max_bytes=max(fetch_bytes, 52428800),
        max_poll_records=max_poll_records,
        isolation_level=kafka.isolation_level,
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=kafka.heartbeat_interval_ms,
        group_instance_id=kafka.group_instance_id,
        bootstrap_timeout_ms=int(kafka.request_timeout_ms),
        # A topic created (or partitions added) after the worker joined is noticed within 30 s,
        # not the client default of 5 min.
        metadata_max_age_ms=30_000,
    )
    config.update(overrides)
    consumer = KafkaConsumer(**config)
    if topics:
        consumer.subscribe(topics)
    return consumer


_BATCH_BYTES = 1 << 20


def make_producer(
    kafka: KafkaSettings, *, client_id: str | None = None, **overrides: Any
) -> KafkaProducer:
    """An ``acks=all`` producer, one request in flight, sized for the topics'
    ``max.message.bytes`` (not idempotent: the module docstring says why)."""
    delivery_ms = int(float(kafka.unreachable_timeout_s) * 1000)
    request_ms = int(kafka.request_timeout_ms)
    config: dict[str, Any] = connection_kwargs(kafka)
    config.update(
        client_id=client_id or kafka.client_id,
        acks="all",
        enable_idempotence=False,
        max_in_flight_requests_per_connection=1,
        compression_type=None if kafka.compression_type == "none" else kafka.compression_type,
        max_request_size=int(kafka.max_message_bytes),
        # Results are ~17 kB, larger than kafka-python's 16 kB default batch, which put one result
        # in each request: with one request in flight that capped a producer at a few hundred
        # results/s. 1 MiB batches (never more than a record may be; within the broker's default
        # message.max.bytes) carry tens of them per request (bench/result_producer.py).
        batch_size=min(_BATCH_BYTES, int(kafka.max_message_bytes)),
        linger_ms=2,
        # kafka-python requires delivery_timeout_ms >= linger_ms + request_timeout_ms
        delivery_timeout_ms=max(delivery_ms, request_ms + 1000),
        max_block_ms=max(delivery_ms, 1000),
        # a broker down at start counts against the same budget as one lost later
        bootstrap_timeout_ms=max(delivery_ms, 1000),
    )
    config.update(overrides)
    return KafkaProducer(**config)


def make_admin(
    kafka: KafkaSettings, *, client_id: str | None = None, timeout_s: float | None = None
) -> KafkaAdminClient:
    """An admin client; with ``timeout_s`` it gives up on the broker that soon (commands ask a
    person's question, not a worker's)."""
    config = connection_kwargs(kafka)
    config["client_id"] = (client_id or kafka.client_id) + "-admin"
    if timeout_s is not None:
        ms = timeout_ms(timeout_s)
        config.update(
            bootstrap_timeout_ms=ms, request_timeout_ms=ms, reconnect_backoff_max_ms=min(ms, 1000)
        )
    return KafkaAdminClient(**config)


def make_reader(kafka: KafkaSettings, *, timeout_s: float | None = None) -> KafkaConsumer:
    """A group-less consumer (assign and seek by hand): joins no group, commits nothing."""
    config = connection_kwargs(kafka)
    if timeout_s is not None:
        config["bootstrap_timeout_ms"] = timeout_ms(timeout_s)
    fetch_bytes = _fetch_bytes(kafka)
    return KafkaConsumer(
        group_id=None,
        enable_auto_commit=False,
        isolation_level=kafka.isolation_level,
        fetch_max_bytes=max(52428800, fetch_bytes),
        max_partition_fetch_bytes=fetch_bytes,
        **config,
    )


def timeout_ms(timeout_s: float) -> int:
    """A client timeout in ms, at least one second."""
    return max(1000, int(timeout_s * 1000))

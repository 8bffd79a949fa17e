"""One record produced and read back through clients built from ``KafkaSettings``."""

from __future__ import annotations

import time

from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from memkd_stream.broker.clients import make_producer, make_reader
from memkd_stream.settings import KafkaSettings

__all__ = ["produce_and_read_back"]


def produce_and_read_back(
    settings: KafkaSettings, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]
) -> ConsumerRecord:
    """Send one record with ``make_producer``, read it back at its offset with ``make_reader``."""
    producer = make_producer(settings)
    try:
        meta = producer.send(topic, key=key, value=value, headers=headers).get(60)
    finally:
        producer.close()
    reader = make_reader(settings, timeout_s=30)
    try:
        partition = TopicPartition(topic, meta.partition)
        reader.assign([partition])
        reader.seek(partition, meta.offset)
        deadline = time.monotonic() + 30
        records: list[ConsumerRecord] = []
        while not records and time.monotonic() < deadline:
            records = reader.poll(timeout_ms=500).get(partition, [])
    finally:
        reader.close()
    assert records, f"nothing read back from {topic}"
    return records[0]

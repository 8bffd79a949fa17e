"""Clients built from ``KafkaSettings`` against the real broker: the results producer's
``kafka.compression_type`` (every codec a downstream consumer may meet) round-trips."""

from __future__ import annotations

import time

import pytest
from kafka import TopicPartition

from memkd_stream.broker.clients import make_producer, make_reader
from memkd_stream.settings import Settings

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_results_compressed_with_each_codec_read_back_unchanged(
    service_settings: Settings, unique_topic, codec: str
) -> None:
    topic = unique_topic()
    kafka = service_settings.kafka.model_copy(update={"compression_type": codec})
    value = (b"\x00" * 4000 + b"\xff" * 96) * 64  # a mask-like, compressible payload
    producer = make_producer(kafka)
    try:
        assert producer.config["compression_type"] == (None if codec == "none" else codec)
        meta = producer.send(topic, key=b"A", value=value, headers=[("h", b"v")]).get(60)
    finally:
        producer.close()
    reader = make_reader(kafka, timeout_s=30)
    try:
        partition = TopicPartition(topic, meta.partition)
        reader.assign([partition])
        reader.seek(partition, meta.offset)
        deadline = time.monotonic() + 30
        records = []
        while not records and time.monotonic() < deadline:
            records = reader.poll(timeout_ms=500).get(partition, [])
    finally:
        reader.close()
    assert records, f"nothing read back from {topic} ({codec})"
    record = records[0]
    assert (record.key, record.value, list(record.headers)) == (b"A", value, [("h", b"v")])

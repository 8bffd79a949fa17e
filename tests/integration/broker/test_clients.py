"""Clients built from ``KafkaSettings`` against the real broker: the results producer's
``kafka.compression_type`` (every codec a downstream consumer may meet) round-trips."""

from __future__ import annotations

import pytest

from memkd_stream.broker.clients import make_producer
from memkd_stream.settings import Settings
from tests.support.round_trip import produce_and_read_back

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
    finally:
        producer.close()
    record = produce_and_read_back(kafka, topic, b"A", value, [("h", b"v")])
    assert (record.key, record.value, list(record.headers)) == (b"A", value, [("h", b"v")])

"""Which kafka-python errors mean "no broker answered", and the one-line error for it."""

from __future__ import annotations

from memkd_stream.broker.errors import is_unreachable, unavailable


def test_unreachable_errors_are_recognised() -> None:
    from kafka.errors import KafkaTimeoutError

    assert is_unreachable(KafkaTimeoutError("Unable to bootstrap from 127.0.0.1:1"))
    assert not is_unreachable(ValueError("x"))
    err = unavailable(
        "127.0.0.1:1",
        10.0,
        KafkaTimeoutError("Unable to bootstrap"),
    )
    assert err.code == "kafka-unavailable"
    assert str(err).startswith("Kafka at 127.0.0.1:1 did not answer within 10 s")

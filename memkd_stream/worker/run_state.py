"""What the worker's parts share about one run: the Kafka clients, the stop/drain/close flags,
and the fatal error that decides the exit code.

Who writes what: the facade starts the clients and sets ``stop``/``draining``/``closing``; the
consumer loop sets ``fatal`` when the broker stays unreachable; the sink's delivery callbacks
(producer IO thread) set it when a result cannot be delivered. Once ``fatal`` is set nothing
more is committed, because undelivered work must stay uncommitted (DESIGN.md §4).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from memkd_stream.errors import ExitCode

if TYPE_CHECKING:
    from kafka import KafkaConsumer, KafkaProducer

__all__ = ["RunState"]


@dataclass
class RunState:
    """Mutable state of one ``Worker.run``; every part holds the same instance."""

    # The KafkaConsumer: used only by the consumer thread and the rebalance callbacks that
    # kafka-python runs while that thread is inside poll(). None until the clients start.
    consumer: KafkaConsumer | None = None
    # The KafkaProducer (thread-safe): the decode pool, inference and publisher threads send.
    producer: KafkaProducer | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    draining: threading.Event = field(default_factory=threading.Event)
    closing: bool = False
    fatal: str | None = None
    exit_code: ExitCode = ExitCode.OK

    def fail(self, reason: str, exit_code: ExitCode) -> None:
        """Make the run fatal (the first reason wins): nothing more is committed."""
        if self.fatal is None:
            self.fatal = reason
            self.exit_code = exit_code

    @property
    def kafka_consumer(self) -> KafkaConsumer:
        """The consumer, once the clients have started."""
        if self.consumer is None:
            raise RuntimeError("the Kafka consumer is not started")
        return self.consumer

    @property
    def kafka_producer(self) -> KafkaProducer:
        """The producer, once the clients have started."""
        if self.producer is None:
            raise RuntimeError("the Kafka producer is not started")
        return self.producer

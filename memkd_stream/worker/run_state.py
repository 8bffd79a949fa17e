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
from typing import Any

__all__ = ["EXIT_BROKER_UNREACHABLE", "EXIT_OK", "RunState"]

EXIT_OK = 0
EXIT_BROKER_UNREACHABLE = 3


@dataclass
class RunState:
    """Mutable state of one ``Worker.run``; every part holds the same instance."""

    # The KafkaConsumer: used only by the consumer thread and the rebalance callbacks that
    # kafka-python runs while that thread is inside poll(). None until the clients start.
    consumer: Any = None
    # The KafkaProducer (thread-safe): the decode pool, inference and publisher threads send.
    producer: Any = None
    stop: threading.Event = field(default_factory=threading.Event)
    draining: threading.Event = field(default_factory=threading.Event)
    closing: bool = False
    fatal: str | None = None
    exit_code: int = EXIT_OK

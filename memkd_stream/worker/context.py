"""What every part of one worker shares, bundled once: settings, metrics, the offset tracker,
the run state, the heartbeats and the logger (one frozen ``WorkerContext`` per ``Worker``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from memkd_stream.log import Logger
    from memkd_stream.settings import KafkaSettings, Settings, WorkerSettings
    from memkd_stream.worker.health import Heartbeats
    from memkd_stream.worker.metrics import WorkerMetrics
    from memkd_stream.worker.offsets import OffsetTracker
    from memkd_stream.worker.run_state import RunState

__all__ = ["WorkerContext"]


@dataclass(frozen=True)
class WorkerContext:
    """The shared parts of one worker; each part keeps its own collaborators beside it."""

    settings: Settings
    metrics: WorkerMetrics
    tracker: OffsetTracker
    state: RunState
    heartbeats: Heartbeats
    log: Logger

    @property
    def kafka(self) -> KafkaSettings:
        return self.settings.kafka

    @property
    def worker(self) -> WorkerSettings:
        return self.settings.worker

    @property
    def worker_id(self) -> str:
        return self.settings.worker.worker_id

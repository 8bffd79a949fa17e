"""Hot swap against the real Redis: events, missed events, periodic re-reads, broken artifacts.

A real (tiny, trained) line artifact is published as successive versions of one line; an ``Engine``
serves it and a ``HotSwapper`` follows activations. Versions are told apart by their calibrated
threshold, so each check also proves which model object actually serves.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from memkd.line_model import LineModel

from memkd_stream.lines.store import LineStore
from memkd_stream.settings import ModelSettings, WorkerSettings
from memkd_stream.worker import engine as engine_module
from memkd_stream.worker.engine import Engine
from memkd_stream.worker.hot_swap import HotSwapper

pytestmark = pytest.mark.integration

LITE0 = "tf_efficientnet_lite0"
SWAP_DEADLINE_S = 10.0


class RecordingMetrics:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args: self.calls.append((name, *args))

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [call[1:] for call in self.calls if call[0] == name]


class RecordingLog:
    """A structlog-shaped logger that remembers (level, event)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        return lambda event, *args, **kw: self.events.append((level, event))


@pytest.fixture(scope="module")
def lite0_teacher() -> Any:
    return engine_module.load_teacher(LITE0)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory, artifact_v1: Path) -> dict[str, Path]:
    """Two valid versions of one tiny model (thresholds 1x and 2x).

    v1 is the session's tiny trained artifact (``artifact_v1`` of this folder's conftest, from
    ``tests.support.models.tiny_artifact``); v2 is the same network with another calibration, so
    the object serving a line tells the versions apart.
    """
    model = LineModel.load(artifact_v1)
    assert model.calibration is not None
    model.calibration = dataclasses.replace(
        model.calibration, threshold=2 * model.calibration.threshold
    )
    v2 = tmp_path_factory.mktemp("hot-swap") / "v2.safetensors"
    model.save(v2)
    return {"v1": artifact_v1, "v2": v2}


@pytest.fixture(scope="module")
def shared_teacher(lite0_teacher: Any) -> Iterator[None]:
    """Every Engine of this module gets the one lite0 teacher (loading it takes seconds)."""

    def cached(name: str, weights: Any = None, device: str = "cpu") -> Any:
        assert name == LITE0
        return lite0_teacher

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine_module, "load_teacher", cached)
        yield


@pytest.fixture
def store(redis_client: redis.Redis, redis_prefix: str) -> LineStore:
    return LineStore(redis_client, prefix=redis_prefix, chunk_bytes=1024 * 1024)


@pytest.fixture
def metrics() -> RecordingMetrics:
    return RecordingMetrics()


@pytest.fixture
def engine(shared_teacher: None, store: LineStore, metrics: RecordingMetrics) -> Engine:
    model = ModelSettings(backbone=LITE0, device="cpu")
    return Engine(model, WorkerSettings(cache_max_models=4), store, metrics=metrics)


@pytest.fixture
def start_swapper(store: LineStore, engine: Engine) -> Iterator[Callable[..., HotSwapper]]:
    started: list[HotSwapper] = []

    def start(refresh_interval_s: float = 60.0, **kwargs: Any) -> HotSwapper:
        swapper = HotSwapper(store, engine, refresh_interval_s, **kwargs)
        swapper.start()
        started.append(swapper)
        return swapper

    yield start
    for swapper in started:
        swapper.stop()


def _wait_for(condition: Callable[[], bool], timeout_s: float = SWAP_DEADLINE_S) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s}s")
        time.sleep(0.02)
    return time.monotonic() - started


def _threshold(engine: Engine, line: str = "A") -> float:
    return engine.get_line(line, wait_s=None).model.threshold


def test_activation_event_swaps_within_seconds(
    store: LineStore,
    engine: Engine,
    artifacts: dict[str, Path],
    metrics: RecordingMetrics,
    start_swapper,
) -> None:
    store.publish("A", artifacts["v1"], who="test")
    old = engine.get_line("A", wait_s=None)
    assert old.version == 1
    swapper = start_swapper(refresh_interval_s=60.0)  # no periodic re-read during this test
    _wait_for(lambda: swapper.connected)

    store.publish("A", artifacts["v2"], who="test")
    took = _wait_for(lambda: engine.held_lines() == {"A": 2})

    assert took < SWAP_DEADLINE_S
    new = engine.get_line("A", wait_s=None)
    assert new.model_version == "A@2"
    assert new.model.threshold == pytest.approx(2 * old.model.threshold)
    _wait_for(lambda: metrics.named("swap") == [("A", 2)])  # counted just after the swap
    # A batch that took the old version finishes on it: the old object still scores.
    size = engine.preprocess_params(old)[0]
    assert engine.score(old, torch.zeros(1, 3, size, size)).scores.shape == (1,)


def test_event_missed_while_stopped_is_picked_up_on_subscribe(
    store: LineStore, engine: Engine, artifacts: dict[str, Path], start_swapper
) -> None:
    store.publish("A", artifacts["v1"], who="test")
    engine.get_line("A", wait_s=None)
    store.publish("A", artifacts["v2"], who="test")  # nobody is subscribed: the event is lost
    assert engine.held_lines() == {"A": 1}

    start_swapper(refresh_interval_s=60.0)
    _wait_for(lambda: engine.held_lines() == {"A": 2})


def test_activation_without_event_is_picked_up_by_the_periodic_reread(
    store: LineStore,
    engine: Engine,
    artifacts: dict[str, Path],
    redis_client: redis.Redis,
    redis_prefix: str,
    start_swapper,
) -> None:
    store.publish("A", artifacts["v1"], who="test")
    store.publish("A", artifacts["v2"], activate=False, who="test")
    engine.get_line("A", wait_s=None)
    swapper = start_swapper(refresh_interval_s=0.5)
    _wait_for(lambda: swapper.reconciles >= 1)
    assert engine.held_lines() == {"A": 1}

    redis_client.set(f"{redis_prefix}line:A:current", 2)  # as if the event had been dropped
    took = _wait_for(lambda: engine.held_lines() == {"A": 2})
    assert took < 3.0


def test_rollback_event_swaps_back(
    store: LineStore, engine: Engine, artifacts: dict[str, Path], start_swapper
) -> None:
    store.publish("A", artifacts["v1"], who="test")
    store.publish("A", artifacts["v2"], who="test")
    assert engine.get_line("A", wait_s=None).version == 2
    swapper = start_swapper()
    _wait_for(lambda: swapper.connected)
    assert store.rollback("A", who="test") == 1
    _wait_for(lambda: engine.held_lines() == {"A": 1})


def test_broken_artifact_is_refused_and_the_old_version_keeps_serving(
    store: LineStore,
    engine: Engine,
    artifacts: dict[str, Path],
    metrics: RecordingMetrics,
    redis_client: redis.Redis,
    redis_prefix: str,
    start_swapper,
) -> None:
    store.publish("A", artifacts["v1"], who="test")
    store.publish("A", artifacts["v2"], who="test")
    serving = engine.get_line("A", wait_s=None)
    store.publish("A", artifacts["v1"], activate=False, who="test")  # v3, then damaged in Redis
    chunk = f"{redis_prefix}line:A:v:3:chunk:1"
    damaged = bytearray(redis_client.get(chunk))
    damaged[100] ^= 0xFF
    redis_client.set(chunk, bytes(damaged))
    swapper = start_swapper(refresh_interval_s=0.3)
    _wait_for(lambda: swapper.connected)

    store.activate("A", 3, who="test")
    _wait_for(lambda: metrics.named("swap_failed") == [("A",)])

    assert engine.held_lines() == {"A": 2}
    assert engine.get_line("A", wait_s=None) is serving
    size = engine.preprocess_params(serving)[0]
    assert engine.score(serving, torch.zeros(1, 3, size, size)).scores.isfinite().all()
    # The periodic re-read sees current=3 again and again but never refetches the broken bytes.
    before = swapper.reconciles
    _wait_for(lambda: swapper.reconciles >= before + 3)
    assert metrics.named("swap_failed") == [("A",)]
    # Activating a good version swaps again.
    store.activate("A", 1, who="test")
    _wait_for(lambda: engine.held_lines() == {"A": 1})


def test_lines_not_held_and_malformed_events_are_ignored(
    store: LineStore,
    engine: Engine,
    artifacts: dict[str, Path],
    redis_client: redis.Redis,
    start_swapper,
) -> None:
    store.publish("A", artifacts["v1"], who="test")
    engine.get_line("A", wait_s=None)
    swapper = start_swapper(refresh_interval_s=0.2)
    _wait_for(lambda: swapper.connected)
    store.publish("B", artifacts["v1"], who="test")
    store.publish("B", artifacts["v2"], who="test")
    redis_client.publish(store.events_channel, b"not json")  # a stray publisher on the channel
    bogus = {"line": "no line:id", "version": 1, "action": "late-policy"}
    redis_client.publish(store.events_channel, json.dumps(bogus))
    before = swapper.reconciles
    _wait_for(lambda: swapper.reconciles >= before + 2)
    assert engine.held_lines() == {"A": 1}
    assert not engine.directory.knows("no line:id")  # never a line, a label or a Redis key
    assert swapper.alive and swapper.connected
    store.publish("A", artifacts["v2"], who="test")  # still following the held line
    _wait_for(lambda: engine.held_lines() == {"A": 2})


class FlakyClient:
    """A Redis client whose pub/sub fails ``failures`` times (an outage), then works."""

    def __init__(self, client: redis.Redis, failures: int) -> None:
        self.client = client
        self.failures = failures
        self.attempts = 0

    def pubsub(self, **kwargs: Any) -> Any:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise redis.ConnectionError("Error 111 connecting to redis. Connection refused.")
        return self.client.pubsub(**kwargs)


def test_redis_outage_is_logged_once_then_recovery_rereads(
    store: LineStore, engine: Engine, artifacts: dict[str, Path], redis_client: redis.Redis
) -> None:
    store.publish("A", artifacts["v1"], who="test")
    engine.get_line("A", wait_s=None)
    store.publish("A", artifacts["v2"], who="test")  # happens during the outage
    log = RecordingLog()
    flaky = FlakyClient(redis_client, failures=4)
    swapper = HotSwapper(store, engine, 60.0, log=log, client=flaky)
    swapper.start()
    try:
        _wait_for(lambda: engine.held_lines() == {"A": 2})
    finally:
        swapper.stop()
    assert flaky.attempts == 5  # bounded, growing backoff between attempts
    levels = [(level, event) for level, event in log.events if level in ("warning", "info")]
    assert [level for level, _ in levels] == ["warning", "info"]  # once per outage, not per retry
    assert "lost Redis" in levels[0][1] and "reconnected" in levels[1][1]


def test_stop_is_prompt_even_while_redis_is_unreachable(store: LineStore, engine: Engine) -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)  # nothing listens
    swapper = HotSwapper(store, engine, 30.0, log=RecordingLog(), client=dead)
    swapper.start()
    time.sleep(0.5)
    started = time.monotonic()
    swapper.stop(timeout_s=2.0)
    assert time.monotonic() - started < 2.5
    assert not swapper.connected
    # A connection attempt in progress (the client's own retries) ends soon after; then the
    # thread exits without another attempt.
    _wait_for(lambda: not swapper.alive)

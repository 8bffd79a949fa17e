"""Engine: LRU by count and bytes, unknown vs unavailable lines, swaps that refuse broken models.

The store and ``LineModel.load`` are replaced by small fakes (pure cache/swap logic, no Redis);
``tests/integration/worker/test_hot_swap.py`` runs the same paths on a real artifact in Redis.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
import torch
from memkd.artifact import ArtifactError
from memkd.precision import Precision, PrecisionError

from memkd_stream.lines.errors import StoreUnavailable, UnknownVersion
from memkd_stream.settings import ModelSettings, WorkerSettings
from memkd_stream.worker import engine as engine_module
from memkd_stream.worker.engine import (
    Engine,
    LineUnavailable,
    LoadedLine,
    UnknownLine,
    resolve_device,
)

LITE0 = "tf_efficientnet_lite0"
WRN50 = "wide_resnet50_2"


@dataclass
class FakeTeacher:
    name: str


class FakeModel:
    """Stands in for LineModel: its size is the artifact's length, its 'score' echoes inputs."""

    loads: int = 0

    def __init__(self, blob: bytes, teacher: FakeTeacher) -> None:
        self.blob = blob
        self.teacher = teacher
        self.nbytes = len(blob)
        self.config = SimpleNamespace(input_size=64)
        self.mean = (0.5, 0.5, 0.5)
        self.std = (0.25, 0.25, 0.25)
        self.roi = (1, 2, 30, 40)
        self.calibrated_precision = Precision.BF16 if b"bf16" in blob else Precision.FP32
        self.precisions: list[Precision | str] = []

    @classmethod
    def load(cls, blob: bytes, teacher: FakeTeacher, expected_sha256: str | None = None):
        cls.loads += 1
        if expected_sha256 is not None and hashlib.sha256(blob).hexdigest() != expected_sha256:
            raise ArtifactError("sha256 differs", code="artifact-checksum")
        if blob.startswith(b"broken"):
            raise ArtifactError("not a memkd artifact", code="artifact-corrupt")
        return cls(blob, teacher)

    def score(
        self, teacher: FakeTeacher, batch: torch.Tensor, precision: Precision | str = "auto"
    ) -> tuple[str, torch.Tensor]:
        self.precisions.append(precision)
        return (teacher.name, batch.sum())


@dataclass
class FakeStore:
    """LineStore's read API over dicts; ``down`` makes every call fail like Redis being away."""

    artifacts: dict[tuple[str, int], tuple[bytes, str]] = field(default_factory=dict)
    currents: dict[str, int] = field(default_factory=dict)
    down: bool = False
    fetches: int = 0
    delay_s: float = 0.0

    parents: dict[tuple[str, int], tuple[int, tuple[str, ...]]] = field(default_factory=dict)

    def add(self, line: str, version: int, nbytes: int = 100, *, backbone: str = LITE0, tag=b""):
        blob = (tag or f"{line}@{version}:".encode()).ljust(nbytes, b".")
        self.artifacts[(line, version)] = (blob, backbone)
        self.currents[line] = version

    def add_delta(self, line: str, version: int, parent: int, tensors: tuple[str, ...]) -> None:
        """A delta of ``line@parent`` replacing ``tensors`` (made active)."""
        self.add(line, version, 20)
        self.parents[(line, version)] = (parent, tensors)

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("Redis at test is unreachable")

    def current(self, line: str) -> int | None:
        self._check()
        return self.currents.get(line)

    def shadow(self, line: str) -> int | None:
        self._check()
        return None

    def lines(self) -> list[str]:
        self._check()
        return sorted(self.currents)

    def fetch_artifact_to(self, line: str, version: int, fileobj: Any) -> dict[str, Any]:
        self._check()
        self.fetches += 1
        time.sleep(self.delay_s)
        if (line, version) not in self.artifacts:
            raise UnknownVersion(f"line {line} has no version {version}")
        blob, backbone = self.artifacts[(line, version)]
        fileobj.write(blob)
        meta: dict[str, Any] = {
            "sha256": hashlib.sha256(blob).hexdigest(),
            "metadata": {"teacher": {"name": backbone}},
            "parent": None,
        }
        if (line, version) in self.parents:
            parent, tensors = self.parents[(line, version)]
            meta["metadata"] |= {"kind": "memkd-line-delta", "tensors": list(tensors)}
            meta["parent"] = parent
        return meta


class RecordingMetrics:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str):
        return lambda *args: self.calls.append((name, *args))

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [call[1:] for call in self.calls if call[0] == name]


@pytest.fixture
def teachers_built(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    built: list[str] = []

    def fake_load_teacher(name: str, weights=None, device="cpu") -> FakeTeacher:
        built.append(name)
        return FakeTeacher(name)

    monkeypatch.setattr(engine_module, "load_teacher", fake_load_teacher)
    monkeypatch.setattr(engine_module, "LineModel", FakeModel)
    FakeModel.loads = 0
    return built


def _engine(
    store: FakeStore, max_models: int = 8, max_bytes: int = 10_000, metrics=None, precision="auto"
):
    model = ModelSettings(backbone=LITE0, device="cpu", precision=precision)
    worker = WorkerSettings(cache_max_models=max_models, cache_max_bytes=max_bytes)
    return Engine(model, worker, store, metrics=metrics)


def test_miss_loads_the_active_version_then_hits(teachers_built: list[str]) -> None:
    store, metrics = FakeStore(), RecordingMetrics()
    store.add("A", 1)
    store.add("A", 7)
    engine = _engine(store, metrics=metrics)
    loaded = engine.get_line("A", wait_s=None)
    assert isinstance(loaded, LoadedLine)
    assert (loaded.line, loaded.version, loaded.backbone) == ("A", 7, LITE0)
    assert loaded.model_version == "A@7"
    assert engine.get_line("A", wait_s=None) is loaded
    assert store.fetches == 1
    assert metrics.named("cache_miss") == [("A",)]
    assert metrics.named("cache_hit") == [("A",)]
    assert metrics.named("version_served") == [("A", 7)]
    assert engine.held_lines() == {"A": 7}


def test_unknown_line_is_not_unavailable(teachers_built: list[str]) -> None:
    engine = _engine(FakeStore())
    with pytest.raises(UnknownLine) as exc:
        engine.get_line("nope", wait_s=None)
    assert exc.value.code == "unknown-line"


def test_store_down_makes_a_line_unavailable_and_misses_fail_fast(
    teachers_built: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "_STORE_RETRY_START_S", 0.2)
    store = FakeStore()
    store.add("A", 1)
    store.down = True
    calls = 0
    real_current = store.current

    def counting_current(line: str) -> int | None:
        nonlocal calls
        calls += 1
        return real_current(line)

    store.current = counting_current  # type: ignore[method-assign]
    engine = _engine(store)
    with pytest.raises(LineUnavailable) as exc:
        engine.get_line("A", wait_s=None)
    assert exc.value.code == "line-unavailable"
    # Within the retry window a miss does not wait on Redis again (decode threads stay free).
    with pytest.raises(LineUnavailable, match="next attempt"):
        engine.get_line("A", wait_s=None)
    assert calls == 1
    store.down = False
    time.sleep(0.25)
    assert engine.get_line("A", wait_s=None).version == 1  # loads once Redis is back
    assert calls == 2


def test_broken_active_artifact_makes_the_line_unavailable(teachers_built: list[str]) -> None:
    store = FakeStore()
    store.add("A", 1, tag=b"broken")
    engine = _engine(store)
    with pytest.raises(LineUnavailable, match="A@1"):
        engine.get_line("A", wait_s=None)
    with pytest.raises(LineUnavailable, match="activate another version"):
        engine.get_line("A", wait_s=None)
    assert store.fetches == 1  # known-broken bytes are not downloaded for every record
    store.add("A", 2)  # the operator activates a good version
    assert engine.get_line("A", wait_s=None).version == 2


def test_held_lines_keep_serving_while_the_store_is_down(teachers_built: list[str]) -> None:
    store = FakeStore()
    store.add("A", 1)
    engine = _engine(store)
    loaded = engine.get_line("A", wait_s=None)
    store.down = True
    assert engine.get_line("A", wait_s=None) is loaded


def test_lru_evicts_least_recently_used_by_count(teachers_built: list[str]) -> None:
    store = FakeStore()
    for line in "ABC":
        store.add(line, 1)
    engine = _engine(store, max_models=2)
    engine.get_line("A", wait_s=None)
    engine.get_line("B", wait_s=None)
    engine.get_line("A", wait_s=None)  # A is now the most recently used
    engine.get_line("C", wait_s=None)
    assert engine.held_lines() == {"A": 1, "C": 1}


def test_lru_evicts_by_bytes(teachers_built: list[str]) -> None:
    store = FakeStore()
    store.add("A", 1, nbytes=100)
    store.add("B", 1, nbytes=100)
    store.add("C", 1, nbytes=120)
    engine = _engine(store, max_bytes=250)
    engine.get_line("A", wait_s=None)
    engine.get_line("B", wait_s=None)
    assert engine.held_lines() == {"A": 1, "B": 1}  # 200 bytes fit in 250
    engine.get_line("C", wait_s=None)
    assert engine.held_lines() == {"B": 1, "C": 1}  # 320 would not: A, the oldest, goes


def test_a_model_larger_than_the_byte_bound_is_held_alone(teachers_built: list[str]) -> None:
    store = FakeStore()
    store.add("A", 1, nbytes=100)
    store.add("BIG", 1, nbytes=400)
    engine = _engine(store, max_bytes=250)
    engine.get_line("A", wait_s=None)
    assert engine.get_line("BIG", wait_s=None).nbytes == 400
    assert engine.held_lines() == {"BIG": 1}


def test_one_teacher_per_backbone_shared_by_its_lines(teachers_built: list[str]) -> None:
    store = FakeStore()
    store.add("A", 1)
    store.add("B", 1)
    store.add("W", 1, backbone=WRN50)
    engine = _engine(store)
    a, b, w = (engine.get_line(line, wait_s=None) for line in ("A", "B", "W"))
    assert a.teacher is b.teacher
    assert w.teacher is not a.teacher and w.backbone == WRN50
    assert sorted(teachers_built) == [LITE0, WRN50]


def test_swap_replaces_the_entry_and_old_batches_keep_theirs(teachers_built: list[str]) -> None:
    store, metrics = FakeStore(), RecordingMetrics()
    store.add("A", 1)
    engine = _engine(store, metrics=metrics)
    old = engine.get_line("A", wait_s=None)
    store.add("A", 2)
    assert engine.swap("A", 2) is True
    new = engine.get_line("A", wait_s=None)
    assert (old.version, new.version) == (1, 2)
    assert old.model is not new.model  # a batch holding ``old`` still scores on version 1
    assert metrics.named("swap") == [("A", 2)]
    assert engine.swap("A", 2) is False  # already serving it
    assert store.fetches == 2


def test_swap_refuses_a_broken_artifact_and_never_retries_it(teachers_built: list[str]) -> None:
    store, metrics = FakeStore(), RecordingMetrics()
    store.add("A", 2)
    engine = _engine(store, metrics=metrics)
    engine.get_line("A", wait_s=None)
    store.add("A", 3, tag=b"broken")
    assert engine.swap("A", 3) is False
    assert engine.held_lines() == {"A": 2}
    assert metrics.named("swap_failed") == [("A",)]
    fetches = store.fetches
    assert engine.swap("A", 3) is False
    assert store.fetches == fetches  # versions are immutable: broken bytes stay broken
    store.add("A", 4)
    assert engine.swap("A", 4) is True


def test_swap_propagates_store_outages_and_keeps_serving(teachers_built: list[str]) -> None:
    store = FakeStore()
    store.add("A", 1)
    engine = _engine(store)
    engine.get_line("A", wait_s=None)
    store.add("A", 2)
    store.down = True
    with pytest.raises(StoreUnavailable):
        engine.swap("A", 2)
    assert engine.held_lines() == {"A": 1}
    store.down = False
    assert engine.swap("A", 2) is True  # transient failures are retried


def test_swap_ignores_lines_not_held(teachers_built: list[str]) -> None:
    store = FakeStore()
    store.add("A", 1)
    engine = _engine(store)
    assert engine.swap("A", 1) is False
    assert store.fetches == 0
    assert engine.held_lines() == {}


def test_concurrent_misses_load_a_line_once(teachers_built: list[str]) -> None:
    store = FakeStore(delay_s=0.05)
    store.add("A", 1)
    engine = _engine(store)
    results: list[LoadedLine] = []
    threads = [
        threading.Thread(target=lambda: results.append(engine.get_line("A", wait_s=None)))
        for _ in "12"
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.fetches == 1
    assert results[0] is results[1]


def test_preload_loads_teachers_and_every_line(teachers_built: list[str]) -> None:
    store = FakeStore()
    store.add("A", 1)
    store.add("B", 3)
    store.add("X", 1, tag=b"broken")
    engine = _engine(store)
    assert not engine.teachers_loaded
    assert engine.preload([]) == ["A", "B"]  # the broken one loads (or fails) on demand
    assert engine.teachers_loaded
    assert engine.held_lines() == {"A": 1, "B": 3}


def test_preload_of_named_lines_and_with_the_store_down(teachers_built: list[str]) -> None:
    store = FakeStore()
    store.add("A", 1)
    store.add("B", 1)
    assert _engine(store).preload(["B", "nope"]) == ["B"]
    store.down = True
    engine = _engine(store)
    assert engine.preload() == []
    assert engine.teachers_loaded  # ready to serve: lines load when Redis returns


def test_preprocess_params_and_score_come_from_the_model(teachers_built: list[str]) -> None:
    store = FakeStore()
    store.add("A", 1)
    engine = _engine(store)
    loaded = engine.get_line("A", wait_s=None)
    assert engine.preprocess_params(loaded) == (64, (0.5,) * 3, (0.25,) * 3, (1, 2, 30, 40))
    name, total = engine.score(loaded, torch.ones(2, 3, 4, 4))
    assert name == LITE0 and total.item() == 96.0
    assert loaded.model.precisions == [engine.precision]


def test_the_settings_precision_is_resolved_once_and_passed_to_every_score(
    teachers_built: list[str],
) -> None:
    store = FakeStore()
    store.add("A", 1)
    store.add("B", 1, tag=b"B@1:bf16")
    engine = _engine(store, precision="bf16")  # forced: runs on any CPU, emulated where needed
    assert engine.precision is Precision.BF16
    with structlog.testing.capture_logs() as logs:
        for line in ("A", "A", "B"):
            loaded = engine.get_line(line, wait_s=None)
            engine.score(loaded, torch.ones(1, 3, 4, 4))
    assert engine.get_line("A", wait_s=None).model.precisions == [Precision.BF16] * 2
    noted = [e for e in logs if "another precision" in e["event"]]
    assert [(e["line"], e["precision"], e["calibrated_precision"]) for e in noted] == [
        ("A", "bf16", "fp32")  # once per loaded line; B was calibrated at bf16
    ]


def test_fp16_on_a_cpu_is_refused_when_the_engine_starts(teachers_built: list[str]) -> None:
    with pytest.raises(PrecisionError, match="fp16 needs a CUDA GPU") as err:
        _engine(FakeStore(), precision="fp16")
    assert err.value.code == "precision-unsupported"


def test_resolve_device() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda:1")


MEMORIES = ("memories.0.keys", "memories.0.values")


@pytest.fixture
def composed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, str | None]]:
    """Replace memkd.delta.load_delta: record what each delta was composed onto."""
    calls: list[tuple[Any, str | None]] = []

    def fake_load_delta(blob, parent, teacher, expected_sha256=None, *, parent_sha256=None):
        calls.append((parent, parent_sha256))
        return FakeModel(blob, teacher)

    monkeypatch.setattr(engine_module, "load_delta", fake_load_delta)
    return calls


def test_a_delta_is_composed_onto_the_held_parent_and_moves_only_its_own_bytes(
    teachers_built: list[str], composed: list[tuple[Any, str | None]]
) -> None:
    store = FakeStore()
    store.add("A", 1)
    engine = _engine(store)
    parent = engine.get_line("A", wait_s=None)
    store.add_delta("A", 2, parent=1, tensors=MEMORIES)
    assert engine.swap("A", 2)
    assert store.fetches == 2  # the delta only: the parent was held
    assert composed[-1][0] is parent.model and composed[-1][1] == parent.base_sha256
    refit = engine.get_line("A", wait_s=None)
    assert (refit.version, refit.base_version, refit.replaced) == (2, 1, MEMORIES)
    store.add_delta("A", 3, parent=1, tensors=MEMORIES)  # e.g. a threshold change of A@2
    assert engine.swap("A", 3) and store.fetches == 3
    assert composed[-1][0] is refit.model  # A@2 replaced nothing A@3 does not replace


def test_a_cold_delta_fetches_its_parent_and_a_missing_parent_is_refused(
    teachers_built: list[str], composed: list[tuple[Any, str | None]]
) -> None:
    store = FakeStore()
    store.add("A", 1)
    store.add_delta("A", 2, parent=1, tensors=MEMORIES)
    engine = _engine(store)
    loaded = engine.get_line("A", wait_s=None)
    assert loaded.version == 2 and store.fetches == 2  # the delta, then its parent
    assert isinstance(composed[-1][0], bytes)
    store.add_delta("A", 3, parent=9, tensors=MEMORIES)  # its parent is not stored
    assert not engine.swap("A", 3)
    assert engine.get_line("A", wait_s=None) is loaded  # the old version keeps serving

"""The inference engine: shared teachers and an LRU of line models on the device (DESIGN.md §5).

A worker holds one frozen teacher per backbone in use, shared by every line on that backbone, and
an LRU cache of line models bounded by count and bytes (``LineModel.nbytes``). A cache miss reads
the line's active version from the ``LineStore`` and loads its artifact (sha256 checked by the
store and again by ``LineModel.load``). All model math is ``memkd``'s: this module only moves
tensors to the device and calls ``LineModel.score``.

Concurrency. The worker thread calls ``get_line`` and ``score``; the hot-swap thread calls
``swap``. The cache dict is guarded by one lock held only for dict operations; loading happens
outside it (one load at a time per line). A ``LoadedLine`` is immutable: a swap replaces the cache
entry, and a batch that already took the old ``LoadedLine`` finishes on it — which is why every
result can name the exact version that scored it.

Failures. A line with no active version is ``unknown-line``. A line that exists but cannot be
loaded now (Redis down, broken artifact, missing teacher weights) is ``line-unavailable``: the
worker pauses and retries before dead-lettering. While Redis is down, misses fail fast between
probes (a doubling window up to 10 s) so the decode threads keep serving held lines instead of
waiting on Redis timeouts. Broken artifact bytes are remembered per version (a published version
is immutable) and never downloaded again; a broken version offered by a swap is refused and the
old version keeps serving.

Deltas (DESIGN.md §5). A delta version is composed with its full parent (``memkd.delta``): onto
the model already held when that model is the same parent, or a delta of it that replaced no
tensor the new delta does not replace (a refit or threshold change then moves only the delta's
bytes), else with the parent fetched from the store. A missing or mismatched parent is refused
like a broken artifact.

Shadow. A line may carry a shadow version (``LoadedLine.shadow``), loaded on the hot-swap or
loader thread only after it proves to share the active version's input
(``memkd.lineage.input_differences``), so one teacher forward serves both students
(``score_batch``). A shadow failure is logged and counted, never raised: it costs neither the
active result nor a device fault.

Besides models, the engine holds what this worker knows about lines in Redis, which the hot-swap
thread keeps current: which lines exist (``directory``) and their late policies
(``late_policies``).
"""

from __future__ import annotations

import io
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import redis
import torch
from memkd.anomaly import AnomalyResult
from memkd.artifact import ArtifactError
from memkd.backbones import Teacher, load_teacher
from memkd.delta import load_delta
from memkd.line_model import LineModel
from memkd.lineage import delta_tensor_names, input_differences, is_delta
from memkd.precision import resolve_precision

from memkd_stream.errors import ErrorCode, MemkdStreamError
from memkd_stream.lines.errors import (
    ChecksumMismatch,
    StoreUnavailable,
    UnknownLine,
    UnknownVersion,
)
from memkd_stream.log import get_logger
from memkd_stream.worker.late_policies import LatePolicies
from memkd_stream.worker.line_directory import LineDirectory
from memkd_stream.worker.metrics import WorkerMetrics

if TYPE_CHECKING:
    from memkd_stream.lines.store import LineStore
    from memkd_stream.settings import ModelSettings, WorkerSettings

__all__ = [
    "ArtifactMismatch",
    "Engine",
    "LineUnavailable",
    "LoadedLine",
    "ShadowModel",
    "ShadowScores",
    "UnknownLine",
    "resolve_device",
]

_WRN50 = "wide_resnet50_2"
# How long a decode thread waits for a line that is not held before it parks the record.
_LOAD_WAIT_S = 0.5
_PUBLISH_HINT = "publish one with 'memkd-stream fit --line LINE' or 'memkd-stream lines publish'"
# While Redis fails, cache misses fail fast between probes; the window doubles up to the bound.
_STORE_RETRY_START_S = 1.0
_STORE_RETRY_MAX_S = 10.0


class LineUnavailable(MemkdStreamError):
    """The line exists but its model cannot be loaded now (Redis down, broken artifact)."""

    code: str = ErrorCode.LINE_UNAVAILABLE


class ArtifactMismatch(MemkdStreamError):
    """A published version whose record this worker cannot use (no teacher named)."""

    code: str = ErrorCode.ARTIFACT_MISMATCH


@dataclass(frozen=True)
class ShadowModel:
    """The version a line is also scored with (``lines shadow``), sharing its teacher features."""

    version: int
    model: LineModel


@dataclass(frozen=True)
class ShadowScores:
    """What the shadow version said about one batch: its scores, or why it could not."""

    model_version: str
    threshold: float | None
    scores: list[float] | None
    error: str | None = None


@dataclass(frozen=True)
class LoadedLine:
    """One version of a line's model, ready to score (immutable; swaps replace it whole).

    ``base_version``/``base_sha256``: the full artifact its weights come from (itself unless it
    is a delta); ``replaced``: the tensors a delta replaced in it; ``shadow``: the version it is
    also scored with, if any.
    """

    line: str
    version: int
    model: LineModel
    teacher: Teacher
    backbone: str
    base_version: int = 0
    base_sha256: str = ""
    replaced: tuple[str, ...] = ()
    shadow: ShadowModel | None = None

    @property
    def model_version(self) -> str:
        """The version string results carry, e.g. ``"A@7"``."""
        return f"{self.line}@{self.version}"

    @property
    def nbytes(self) -> int:
        shadow = int(self.shadow.model.nbytes) if self.shadow is not None else 0
        return int(self.model.nbytes) + shadow


def resolve_device(setting: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; otherwise the named device (cpu, cuda, cuda:N)."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def _is_artifact_fault(exc: BaseException) -> bool:
    """True when the bytes themselves are bad (checksum, corrupt, mismatch): retrying is futile."""
    return isinstance(exc, ArtifactError | ChecksumMismatch | ArtifactMismatch)


class Engine:
    """Teachers + line-model LRU for one worker process.

    Args:
        model_settings: backbone, wrn50_weights, device, precision (resolved here for the device;
            ``memkd.precision.PrecisionError`` when it cannot run there, e.g. fp16 on a CPU).
        worker_settings: cache_max_models, cache_max_bytes.
        store: where line artifacts come from.
        metrics: where the line-cache counters go (hits, misses, swaps, refused swaps, version
            served); a private set when None.
    """

    def __init__(
        self,
        model_settings: ModelSettings,
        worker_settings: WorkerSettings,
        store: LineStore,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.device = resolve_device(model_settings.device)
        self.precision = resolve_precision(model_settings.precision, self.device)
        self.default_backbone: str = model_settings.backbone
        self._wrn50_weights = model_settings.wrn50_weights
        self.max_models = int(worker_settings.cache_max_models)
        self.max_bytes = int(worker_settings.cache_max_bytes)
        self.store = store
        self.metrics = metrics if metrics is not None else WorkerMetrics()
        self.directory = LineDirectory(store, worker_settings.unknown_line_ttl_s)
        self.metrics.limit_lines_to(self.directory.knows)
        self.late_policies = LatePolicies(worker_settings.late_policy)
        self.log = get_logger(__name__)
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, LoadedLine] = OrderedDict()
        self._teachers: dict[str, Teacher] = {}
        self._teacher_lock = threading.Lock()
        # One load at a time, off the decode threads; at most one pending load per line. A
        # daemon thread: a load stuck on a blackholed Redis must not hold the process at exit.
        self._load_queue: queue.SimpleQueue[tuple[str, Future[LoadedLine]]] = queue.SimpleQueue()
        self._loads: dict[str, Future[LoadedLine]] = {}
        threading.Thread(target=self._load_forever, name="memkd-load", daemon=True).start()
        self._refused: dict[str, dict[int, str]] = {}  # line -> broken version -> why
        self._refused_shadows: set[tuple[str, int, int]] = set()  # (line, shadow, active)
        self._store_down_until = 0.0
        self._store_retry_s = _STORE_RETRY_START_S

    # ----------------------------------------------------------------- teachers
    @property
    def teachers_loaded(self) -> bool:
        """Readiness: the default backbone's teacher is on the device."""
        return self.default_backbone in self._teachers

    def teacher(self, backbone: str) -> Teacher:
        """The shared teacher of ``backbone``, loaded on first use (once per process)."""
        found = self._teachers.get(backbone)
        if found is not None:
            return found
        with self._teacher_lock:
            found = self._teachers.get(backbone)
            if found is None:
                weights = self._wrn50_weights if backbone == _WRN50 else None
                found = load_teacher(backbone, weights, device=str(self.device))
                self._teachers[backbone] = found
                self.log.info("teacher loaded", backbone=backbone, device=str(self.device))
            return found

    def load_teachers(self) -> None:
        """Load the default backbone's teacher (the worker calls this before it reports ready)."""
        self.teacher(self.default_backbone)

    # ----------------------------------------------------------------- cache
    def held_lines(self) -> dict[str, int]:
        """Line id -> version of every line model in the cache."""
        with self._lock:
            return {line: loaded.version for line, loaded in self._cache.items()}

    @property
    def cached_bytes(self) -> int:
        with self._lock:
            return sum(loaded.nbytes for loaded in self._cache.values())

    def _peek(self, line: str) -> LoadedLine | None:
        """The held entry of ``line`` without touching the LRU order."""
        with self._lock:
            return self._cache.get(line)

    def _lookup(self, line: str) -> LoadedLine | None:
        with self._lock:
            loaded = self._cache.get(line)
            if loaded is not None:
                self._cache.move_to_end(line)
            return loaded

    def _insert(self, loaded: LoadedLine) -> None:
        """Put ``loaded`` in the cache (replacing its line's entry) and evict least-recently used
        lines until the count and byte bounds hold; the new entry itself is never evicted."""
        evicted: list[LoadedLine] = []
        with self._lock:
            self._cache[loaded.line] = loaded
            self._cache.move_to_end(loaded.line)
            total = sum(entry.nbytes for entry in self._cache.values())
            while len(self._cache) > 1 and (
                len(self._cache) > self.max_models or total > self.max_bytes
            ):
                _, oldest = self._cache.popitem(last=False)
                total -= oldest.nbytes
                evicted.append(oldest)
        for old in evicted:
            self.log.info("line model evicted", line=old.line, version=old.version)
        if loaded.nbytes > self.max_bytes:
            self.log.warning(
                "line model is larger than the cache byte bound; holding it alone",
                line=loaded.line,
                nbytes=loaded.nbytes,
                cache_max_bytes=self.max_bytes,
            )
        self.metrics.version_served(loaded.line, loaded.version)

    def _load(self, line: str, version: int) -> LoadedLine:
        """Fetch and load ``line@version`` without touching the cache. Raises whatever the store
        or ``memkd`` raise; callers classify."""
        buffer = io.BytesIO()
        meta = self.store.fetch_artifact_to(line, version, buffer)  # sha256-checked by the store
        record = meta.get("metadata") or {}
        backbone = _backbone_of(record)
        teacher = self.teacher(backbone)
        base_version, base_sha256 = version, str(meta["sha256"])
        if is_delta(record):
            model, base_version, base_sha256 = self._compose(line, version, meta, buffer, teacher)
        else:
            model = LineModel.load(buffer.getvalue(), teacher, expected_sha256=meta["sha256"])
        if model.calibrated_precision != self.precision:  # allowed: MEMKD.md §6 gives the parity
            self.log.info(
                "line model scores at another precision than it was calibrated at",
                line=line,
                version=version,
                precision=self.precision.value,
                calibrated_precision=model.calibrated_precision.value,
            )
        return LoadedLine(
            line=line,
            version=version,
            model=model,
            teacher=teacher,
            backbone=backbone,
            base_version=base_version,
            base_sha256=base_sha256,
            replaced=delta_tensor_names(record),
        )

    def _compose(
        self, line: str, version: int, meta: dict[str, Any], buffer: io.BytesIO, teacher: Teacher
    ) -> tuple[LineModel, int, str]:
        """A delta composed with its full parent: onto the held model when it has the parent's
        weights wherever the delta keeps them, else with the parent's bytes from the store."""
        parent = meta.get("parent")
        if parent is None:
            raise ArtifactMismatch(
                f"{line}@{version} is a delta, but the store does not say which version is its "
                "parent; publish it again"
            )
        names = set(delta_tensor_names(meta.get("metadata") or {}))
        held = self._peek(line)
        if held is not None and held.base_version == parent and set(held.replaced) <= names:
            model = load_delta(
                buffer.getvalue(), held.model, teacher, meta["sha256"],
                parent_sha256=held.base_sha256,
            )  # fmt: skip
            return model, held.base_version, held.base_sha256
        parent_buffer = io.BytesIO()
        try:
            parent_meta = self.store.fetch_artifact_to(line, parent, parent_buffer)
        except UnknownVersion as exc:
            raise ArtifactMismatch(
                f"{line}@{version} is a delta of {line}@{parent}, which is not in the store ({exc})"
            ) from exc
        model = load_delta(
            buffer.getvalue(), parent_buffer.getvalue(), teacher, meta["sha256"],
            parent_sha256=parent_meta["sha256"],
        )  # fmt: skip
        return model, int(parent), str(parent_meta["sha256"])

    def _check_store_gate(self, line: str) -> None:
        """Fail fast while Redis is known to be down (one probe per retry window), so that
        decode threads do not block on the client's timeouts and retries for every record of
        a line that is not held, while held lines keep being served."""
        with self._lock:
            wait_s = self._store_down_until - time.monotonic()
        if wait_s > 0:
            raise LineUnavailable(
                f"Redis is unavailable, so line {line!r} cannot be loaded now "
                f"(next attempt in {wait_s:.1f}s)"
            )

    def _store_failed(self) -> None:
        with self._lock:
            self._store_down_until = time.monotonic() + self._store_retry_s
            self._store_retry_s = min(self._store_retry_s * 2, _STORE_RETRY_MAX_S)

    def _store_ok(self) -> None:
        with self._lock:
            self._store_down_until = 0.0
            self._store_retry_s = _STORE_RETRY_START_S

    def _load_failed(self, line: str, version: int, exc: BaseException) -> None:
        """Remember why a load failed: Redis down (retry later) or broken bytes (never retry
        them: a published version is immutable)."""
        if _is_store_fault(exc):
            self._store_failed()
        elif _is_artifact_fault(exc):
            with self._lock:
                self._refused.setdefault(line, {})[version] = str(exc)

    def get_line(self, line: str, wait_s: float | None = _LOAD_WAIT_S) -> LoadedLine:
        """The line's model: a cache hit, else its active version loaded from the store.

        Loads run on the engine's loader thread; the caller waits at most ``wait_s`` (None:
        until done, for ``preload``), so a Redis that hangs never holds a decode thread for
        long, and records of held lines keep flowing.

        Raises:
            UnknownLine: the store has no active version of ``line``.
            LineUnavailable: the line cannot be loaded now (store down, broken artifact, or
                still loading).
        """
        loaded = self._lookup(line)
        if loaded is not None:
            self.metrics.cache_hit(line)
            return loaded
        if not self.directory.may_exist(line):  # no per-key state for invented keys
            raise UnknownLine(f"line {line!r} does not exist in Redis; {_PUBLISH_HINT}")
        self._check_store_gate(line)
        with self._lock:
            future = self._loads.get(line)
            if future is None:
                self.metrics.cache_miss(line)
                future = self._loads[line] = Future()
                self._load_queue.put((line, future))
        try:
            return future.result(timeout=wait_s)
        except FutureTimeout:
            raise LineUnavailable(f"line {line!r} is still loading from Redis") from None
        finally:
            if future.done():
                with self._lock:
                    if self._loads.get(line) is future:
                        del self._loads[line]

    def _load_forever(self) -> None:
        """(loader thread) Run the queued loads, one at a time."""
        while True:
            line, future = self._load_queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self._load_active(line))
            except BaseException as exc:  # handed to whoever waits for this line
                future.set_exception(exc)
                continue
            self._attach_shadow(line)  # after the active model serves: never delays it

    def _attach_shadow(self, line: str) -> None:
        """(loader thread) Load the line's shadow, if it has one; failures are only logged."""
        try:
            self.sync_shadow(line, self.store.shadow(line))
        except Exception as exc:  # the hot-swap thread's next re-read tries again
            self.log.warning("shadow version not loaded", line=line, error=str(exc))

    def _load_active(self, line: str) -> LoadedLine:
        """(loader thread) Read the line's active version and load it into the cache."""
        loaded = self._lookup(line)  # loaded meanwhile (a swap, an earlier load)
        if loaded is not None:
            return loaded
        try:
            version = self.store.current(line)
        except Exception as exc:
            if _is_store_fault(exc):
                self._store_failed()
            raise LineUnavailable(
                f"cannot read the active version of line {line!r}: {exc}"
            ) from exc
        if version is None:
            raise UnknownLine(f"line {line!r} has no active model; {_PUBLISH_HINT}")
        version = int(version)
        reason = self._refused.get(line, {}).get(version)
        if reason is not None:  # known-broken bytes: do not download them again
            raise LineUnavailable(
                f"line {line}@{version} cannot be loaded ({reason}); activate another "
                f"version with 'memkd-stream lines activate {line} VERSION'"
            )
        try:
            loaded = self._load(line, version)
        except Exception as exc:
            self._load_failed(line, version, exc)
            self.log.warning(
                "line model could not be loaded",
                line=line,
                version=version,
                error=str(exc),
                code=getattr(exc, "code", type(exc).__name__),
            )
            raise LineUnavailable(f"cannot load line {line}@{version}: {exc}") from exc
        self._store_ok()
        self._insert(loaded)
        self.log.info("line model loaded", line=line, version=loaded.version, nbytes=loaded.nbytes)
        return loaded

    def line_activated(self, line: str) -> None:
        """An activation event named ``line``: it exists now, whatever was answered before."""
        self.directory.add(line)

    def swap(self, line: str, version: int) -> bool:
        """Load ``line@version`` in the caller's thread (the hot-swap thread: one swap at a
        time) and swap it in if it loads.

        Only lines held in the cache are swapped (others load on demand). A broken artifact is
        refused (logged, ``metrics.swap_failed``) and never retried; the old version keeps
        serving. Store errors propagate so the caller can back off and retry.

        Returns:
            True when the cache now serves the new version because of this call.
        """
        version = int(version)
        held = self.held_lines()
        if line not in held or held[line] == version:
            return False
        if version in self._refused.get(line, {}):
            return False
        held_now = held[line]
        try:
            loaded = self._load(line, version)
        except Exception as exc:
            self._load_failed(line, version, exc)
            if _is_store_fault(exc):
                raise  # transient: the caller backs off and retries
            self.log.warning(
                "new line model refused; the old version keeps serving",
                line=line,
                version=version,
                serving=held_now,
                error=str(exc),
                code=getattr(exc, "code", type(exc).__name__),
            )
            self.metrics.swap_failed(line)
            return False
        self._store_ok()
        with self._lock:
            previous = self._cache.get(line)
        if previous is None:  # evicted while loading: do not grow the cache behind its back
            return False
        shadow = previous.shadow
        if (
            shadow is not None
            and shadow.version != version
            and not self._input_differences(loaded, shadow.model, shadow.version)
        ):
            loaded = replace(loaded, shadow=shadow)  # the trial goes on with the new version
        self._insert(loaded)
        self.log.info("line model swapped", line=line, version=version, previous=held_now)
        self.metrics.swap(line, version)
        return True

    def sync_shadow(self, line: str, version: int | None) -> None:
        """(hot-swap or loader thread) Make the held ``line`` also score with ``version`` (None:
        stop). A version that cannot load or does not share the active one's input is refused
        (logged once, not retried while the same version is active). Store errors propagate so
        the caller can back off and retry."""
        held = self._peek(line)
        if held is None:
            return
        have = held.shadow.version if held.shadow is not None else None
        if version == have:
            return
        if version is None or version == held.version:
            self._set_shadow(held, None)
            self.log.info("shadow scoring ended", line=line, version=have)
            return
        if (line, version, held.version) in self._refused_shadows:
            return
        try:
            loaded = self._load(line, version)
        except Exception as exc:
            if _is_store_fault(exc):
                raise
            self._refuse_shadow(line, version, held.version, str(exc))
            return
        if self._input_differences(held, loaded.model, version):
            return
        self._set_shadow(held, ShadowModel(version, loaded.model))
        self.log.info("shadow scoring started", line=line, version=version, active=held.version)

    def _input_differences(self, active: LoadedLine, shadow: LineModel, version: int) -> list[str]:
        """What keeps ``shadow`` from sharing ``active``'s teacher features (refused if any)."""
        differences = input_differences(active.model.record(), shadow.record())
        if differences:
            reason = "it does not share the active version's input: " + "; ".join(differences)
            self._refuse_shadow(active.line, version, active.version, reason)
        return differences

    def _refuse_shadow(self, line: str, version: int, active: int, reason: str) -> None:
        self._refused_shadows.add((line, version, active))
        self.metrics.shadow_failed(line)
        self.log.warning("shadow version refused", line=line, version=version, error=reason)

    def _set_shadow(self, held: LoadedLine, shadow: ShadowModel | None) -> None:
        """Replace ``held`` by a copy with ``shadow``, unless a swap replaced it meanwhile."""
        with self._lock:
            if self._cache.get(held.line) is held:
                self._cache[held.line] = replace(held, shadow=shadow)

    def preload(
        self, lines: list[str] | tuple[str, ...] = (), beat: Callable[[], None] = lambda: None
    ) -> list[str]:
        """Load the teachers, then the active version of ``lines`` (empty = every line in the
        store) until the cache is full: no line is loaded only to evict another. Failures are
        logged, not raised: such lines load on demand later. ``beat`` is called after each
        step (start-up progress for the health endpoint).

        Returns:
            The lines now held.
        """
        self.load_teachers()
        beat()
        wanted = list(lines)
        if not wanted:
            try:
                wanted = sorted(self.store.lines())
            except Exception as exc:
                self.log.warning("cannot list lines to preload", error=str(exc))
                return []
        for index, line in enumerate(wanted):
            if len(self.held_lines()) >= self.max_models or self.cached_bytes >= self.max_bytes:
                self.log.warning(
                    "the line cache is full; the other lines load on demand",
                    skipped=wanted[index:],
                    cache_max_models=self.max_models,
                    cache_max_bytes=self.max_bytes,
                )
                break
            try:
                self.get_line(line, wait_s=None)
            except MemkdStreamError as exc:
                self.log.warning("preload skipped a line", line=line, code=exc.code, error=str(exc))
            beat()
        return sorted(self.held_lines())

    # ----------------------------------------------------------------- scoring
    def preprocess_params(
        self, loaded: LoadedLine
    ) -> tuple[int, tuple[float, ...], tuple[float, ...], tuple[int, int, int, int] | None]:
        """What ``ImageDecoder.decode`` needs for this line: (size, mean, std, roi)."""
        model = loaded.model
        roi = tuple(int(v) for v in model.roi) if model.roi is not None else None
        return (
            int(model.config.input_size),
            tuple(float(v) for v in model.mean),
            tuple(float(v) for v in model.std),
            roi,  # type: ignore[return-value]
        )

    def score(self, loaded: LoadedLine, batch: torch.Tensor) -> AnomalyResult:
        """Score a batch [B, 3, H, W] with the line's model (maps and scores via ``memkd``)."""
        # LineModel.score moves the batch to the model's device and runs it at the precision.
        return loaded.model.score(loaded.teacher, batch, self.precision)

    def score_batch(
        self, loaded: LoadedLine, batch: torch.Tensor
    ) -> tuple[AnomalyResult, ShadowScores | None]:
        """The active result, and the shadow version's scores on the same teacher features
        when the line has one. Only the active path may raise (the device guard judges it)."""
        shadow = loaded.shadow
        if shadow is None:
            return self.score(loaded, batch), None
        features = loaded.model.teacher_features(loaded.teacher, batch, self.precision)
        result = loaded.model.score_features(features, self.precision)
        ref = f"{loaded.line}@{shadow.version}"
        try:
            scores = shadow.model.score_features(features, self.precision).scores
            values = [float(v) for v in scores.detach().float().cpu()]
            return result, ShadowScores(ref, float(shadow.model.threshold), values)
        except Exception as exc:  # a shadow never costs the active result or the device
            self.metrics.shadow_failed(loaded.line)
            self.log.warning("shadow scoring failed", line=loaded.line, version=shadow.version,
                             error=f"{type(exc).__name__}: {exc}")  # fmt: skip
            return result, ShadowScores(ref, None, None, f"{type(exc).__name__}: {exc}")


def _is_store_fault(exc: BaseException) -> bool:
    """True for a Redis/connection problem (transient), as opposed to bad artifact bytes."""
    return isinstance(exc, StoreUnavailable | redis.RedisError | ConnectionError | TimeoutError)


def _backbone_of(record: dict[str, Any]) -> str:
    """The teacher backbone an artifact's record names (the store keeps the record in the
    version's meta, so the right shared teacher is known before the artifact is parsed)."""
    teacher = record.get("teacher")
    if isinstance(teacher, dict) and teacher.get("name"):
        return str(teacher["name"])
    model = record.get("model")
    if isinstance(model, dict) and model.get("backbone"):
        return str(model["backbone"])
    raise ArtifactMismatch(
        "the line model's record does not name its teacher backbone; retrain the line with "
        "this version of memkd"
    )

"""The stages after the consumer: decode pool -> inference thread -> publisher thread.

The worker package's docstring tells how they fit with the consumer thread and how each
failure path ends. Here: the decode pool resolves the line's model and decodes; the inference
thread owns the ``MicroBatcher`` and runs one batch at a time through ``Engine.score`` (the
device is never shared); the publisher thread renders masks, encodes result JSON and produces,
overlapping the next forward, which keeps end-to-end throughput close to model-only throughput.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from memkd.anomaly import render_mask

from memkd_stream.contract.codes import DeadLetterCode
from memkd_stream.contract.request import Request
from memkd_stream.contract.result import ShadowVerdict, encode_result, result_headers
from memkd_stream.errors import ExitCode
from memkd_stream.lines.errors import UnknownLine
from memkd_stream.worker.batcher import Batch, MicroBatcher
from memkd_stream.worker.context import WorkerContext
from memkd_stream.worker.decode import (
    DecodedImage,
    DecodeFailed,
    ImageDecoder,
    encode_mask_png,
)
from memkd_stream.worker.device_guard import DeviceFault, DeviceGuard
from memkd_stream.worker.engine import Engine, LoadedLine
from memkd_stream.worker.late_images import LateImages
from memkd_stream.worker.sink import ResultSink
from memkd_stream.worker.work_item import ScoredBatch, WorkItem, is_current, log_fields

__all__ = ["Pipeline"]

_SENTINEL: Any = object()
# An idle publisher still beats this often.
_IDLE_BEAT_S = 0.5


class Pipeline:
    """Owns the decode pool, the inference and publisher threads, and the queues between them."""

    def __init__(
        self, ctx: WorkerContext, engine: Engine, decoder: ImageDecoder, sink: ResultSink
    ) -> None:
        self.ctx = ctx
        self.engine = engine
        self.decoder = decoder
        self.sink = sink
        self.guard = DeviceGuard(engine)
        self.late = LateImages(ctx, engine.late_policies, sink)
        self.infer_q: queue.Queue[WorkItem] = queue.Queue()
        self.publish_q: queue.Queue[ScoredBatch | None] = queue.Queue()
        # decode pool -> consumer thread: ("park", item) and ("retry_done", item)
        self.control_q: queue.Queue[tuple[str, WorkItem]] = queue.Queue()
        self.decode_pool: ThreadPoolExecutor | None = None
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()  # guards _unavailable_since (decode pool threads)
        self._unavailable_since: dict[str, float] = {}

    def start(self) -> None:
        self.decode_pool = ThreadPoolExecutor(
            max_workers=self.ctx.worker.decode_threads, thread_name_prefix="memkd-decode"
        )
        for name, target in (
            ("memkd-infer", self._infer_loop),
            ("memkd-publish", self._publish_loop),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self.threads.append(thread)

    def submit(self, item: WorkItem) -> None:
        """Hand a parsed record (or a parked one due for a retry) to the decode pool."""
        if self.decode_pool is None:
            raise RuntimeError("the pipeline is not started")
        self.decode_pool.submit(self._decode, item)

    def shutdown(self, wait: bool = True) -> None:
        """Stop the stages; with ``wait`` the inference thread first flushes its batches."""
        if self.decode_pool is not None:
            self.decode_pool.shutdown(wait=wait, cancel_futures=not wait)
        if self.threads:
            self.infer_q.put(_SENTINEL)
            if wait:
                for thread in self.threads:
                    thread.join(timeout=10)
            self.threads = []

    # ------------------------------------------------------------------ decode pool
    def _decode(self, item: WorkItem) -> None:
        try:
            with self.ctx.heartbeats.working("decode", self.ctx.worker.stuck_after_s):
                self._decode_one(item)
        except Exception as exc:  # never lose a record to an unexpected error
            self.ctx.log.exception("decode stage failed", **log_fields(item))
            self.sink.dead_letter(
                item, DeadLetterCode.DECODE_ERROR, f"internal decode failure: {exc}"
            )
        finally:
            if item.retry:
                item.retry = False
                self.control_q.put(("retry_done", item))

    def _decode_one(self, item: WorkItem) -> None:
        if not is_current(self.ctx.tracker, item):
            return
        request = _request(item)
        started = time.perf_counter()
        try:
            loaded = self.engine.get_line(request.line)
        except UnknownLine as exc:
            self.sink.dead_letter(item, DeadLetterCode.UNKNOWN_LINE, str(exc))
            return
        except Exception as exc:  # LineUnavailable, or anything else: retry, then dead-letter
            self._line_unavailable(item, exc)
            return
        with self._lock:
            if self._unavailable_since.pop(request.line, None) is not None:
                self.ctx.metrics.set_unavailable(request.line, False)
                self.ctx.log.info("line available again", line=request.line)
        size, mean, std, roi = self.engine.preprocess_params(loaded)
        try:
            decoded = self.decoder.decode(request.value, size=size, mean=mean, std=std, roi=roi)
        except DecodeFailed as exc:
            self.sink.dead_letter(item, DeadLetterCode(exc.code), str(exc))
            return
        item.loaded = loaded
        item.decoded = decoded
        item.decode_s = time.perf_counter() - started
        item.decoded_mono = time.monotonic()
        self.ctx.metrics.stage("decode", item.decode_s)
        self.infer_q.put(item)

    def line_abandoned(self, line: str) -> None:
        """A parked record of ``line`` was dropped (its partition moved): its outage clock
        starts afresh, so the next owner's record is not dead-lettered on this one's time."""
        with self._lock:
            if self._unavailable_since.pop(line, None) is not None:
                self.ctx.metrics.set_unavailable(line, False)

    def _line_unavailable(self, item: WorkItem, exc: BaseException) -> None:
        line = item.request.line if item.request else "?"
        now = time.monotonic()
        pause_s = self.ctx.worker.line_unavailable_pause_s
        with self._lock:
            since = self._unavailable_since.setdefault(line, now)
            first = since == now
        if first:
            self.ctx.metrics.set_unavailable(line, True)
            self.ctx.log.warning(
                "line model unavailable; pausing its partition and retrying",
                pause_s=pause_s,
                error=str(exc),
                **log_fields(item),
            )
        if now - since >= pause_s:
            self.sink.dead_letter(
                item,
                DeadLetterCode.LINE_UNAVAILABLE,
                f"line {line!r} could not be loaded for {now - since:.0f}s "
                f"(worker.line_unavailable_pause_s={pause_s}): {exc}",
            )
            return
        self.control_q.put(("park", item))

    # ------------------------------------------------------------------ inference thread
    def _infer_loop(self) -> None:
        batcher: MicroBatcher[WorkItem] = MicroBatcher(
            self.ctx.worker.max_batch, self.ctx.worker.max_wait_ms / 1000.0
        )
        while True:
            self.ctx.heartbeats.beat("inference")
            deadline = batcher.next_deadline()
            timeout = 0.2 if deadline is None else min(0.2, max(0.0, deadline - time.monotonic()))
            try:
                item = self.infer_q.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is not None:
                if item is _SENTINEL:
                    break
                self._add(batcher, item)
                while True:  # take everything already decoded: bigger batches, same latency
                    try:
                        more = self.infer_q.get_nowait()
                    except queue.Empty:
                        break
                    if more is _SENTINEL:
                        self.infer_q.put(more)
                        break
                    self._add(batcher, more)
            ready = batcher.pop_all() if self.ctx.state.draining.is_set() else batcher.pop_ready()
            for group in ready:
                self._run_batch(group)
        for group in batcher.pop_all():
            self._run_batch(group)
        self.publish_q.put(None)

    @staticmethod
    def _add(batcher: MicroBatcher[WorkItem], item: WorkItem) -> None:
        loaded = _loaded(item)
        batcher.add((loaded.line, loaded.version, loaded.backbone), item)

    def _run_batch(self, group: Batch[WorkItem]) -> None:
        if self.ctx.state.fatal is not None:
            return  # the circuit is open (or the run is over): leave the records uncommitted
        items = [it for it in group.items if is_current(self.ctx.tracker, it)]
        items = self.late.admit(items)  # late images: marked, or dead-lettered `stale`
        if not items:
            return
        loaded = _loaded(items[0])
        now = time.monotonic()
        started_wall = time.time()
        try:
            scored, failed = self.guard.run(loaded, items)
        except DeviceFault as fault:
            self._open_circuit(fault, loaded, len(items))
            return
        for part in scored:
            waits = [now - it.decoded_mono for it in part.items]
            self.ctx.metrics.batch(len(part.items), part.forward_s)
            batch = ScoredBatch(part.items, loaded, part.maps, part.scores, started_wall,
                                part.forward_s, waits, part.shadow)  # fmt: skip
            self.publish_q.put(batch)
        for item, exc in failed:  # failed alone while the device works: the input's fault
            self.ctx.log.warning(
                "model failed on this image alone",
                error=f"{type(exc).__name__}: {exc}",
                **log_fields(item),
            )
            self.sink.dead_letter(item, DeadLetterCode.MODEL_ERROR, f"{type(exc).__name__}: {exc}")

    def _open_circuit(self, fault: DeviceFault, loaded: LoadedLine, size: int) -> None:
        """The device fails: stop dead-lettering, stop everything, exit 4 (DESIGN.md §4)."""
        self.ctx.log.error(
            "device fault: the worker stops and leaves its records uncommitted",
            error=str(fault),
            line=loaded.line,
            version=loaded.version,
            size=size,
        )
        self.ctx.metrics.device_faults.inc()
        self.ctx.state.fail(f"device fault: {fault}", ExitCode.DEVICE_FAULT)

    # ------------------------------------------------------------------ publisher thread
    def _publish_loop(self) -> None:
        while True:
            self.ctx.heartbeats.beat("publisher")
            try:
                scored = self.publish_q.get(timeout=_IDLE_BEAT_S)
            except queue.Empty:
                continue
            if scored is None:
                break
            for i, item in enumerate(scored.items):
                # One output per record: a failure here is this record's dead letter alone,
                # never a second output for records of the batch already sent.
                try:
                    self._publish_one(scored, i, item)
                except ValueError as exc:  # e.g. a score that is not finite
                    self.sink.dead_letter(
                        item, DeadLetterCode.MODEL_ERROR, f"unusable model output: {exc}"
                    )
                except Exception as exc:
                    self.ctx.log.exception("publishing a result failed", **log_fields(item))
                    self.sink.dead_letter(
                        item,
                        DeadLetterCode.MODEL_ERROR,
                        f"the result could not be encoded: {type(exc).__name__}: {exc}",
                    )

    def _publish_one(self, scored: ScoredBatch, i: int, item: WorkItem) -> None:
        """Render, encode and send the result of the ``i``-th item of ``scored``.

        Raises:
            ValueError: the model's output cannot be a result (a score that is not finite).
        """
        loaded = scored.loaded
        threshold = float(loaded.model.threshold)
        request = _request(item)
        decoded = _decoded(item)
        t0 = time.perf_counter()
        score = scored.scores[i]
        mask = render_mask(scored.maps[i], threshold)
        png = encode_mask_png(mask)
        value = encode_result(
            request,
            model_version=loaded.model_version,
            score=score,
            threshold=threshold,
            image_hw=(decoded.height, decoded.width),
            mask_png=png,
            mask_hw=(int(mask.shape[0]), int(mask.shape[1])),
            timing_ms={
                "queue": (scored.started_wall - request.received_at) * 1000.0,
                "infer": scored.forward_s * 1000.0,
                "total": (time.time() - request.received_at) * 1000.0,
            },
            worker=self.ctx.worker_id,
            shadow=self._shadow_verdict(scored, i, score >= threshold),
            late_ms=item.late_ms,
        )
        key = request.line.encode("utf-8")
        headers = result_headers(request, key, value, self.sink.max_record_bytes)
        metrics = self.ctx.metrics
        metrics.stage("encode", time.perf_counter() - t0)
        metrics.stage("batch_wait", scored.batch_wait_s[i])
        metrics.stage("forward", scored.forward_s / len(scored.items))
        metrics.queued(scored.started_wall - request.received_at)
        metrics.scored(loaded.line, loaded.version, score, score >= threshold)
        self.sink.result(item, key=key, value=value, headers=headers, on_ack=self._result_acked)

    def _shadow_verdict(self, scored: ScoredBatch, i: int, anomalous: bool) -> ShadowVerdict | None:
        """The result's optional ``shadow`` object (DESIGN.md §3), counted by agreement."""
        shadow = scored.shadow
        if shadow is None:
            return None
        if shadow.scores is None or shadow.threshold is None:
            return ShadowVerdict(shadow.model_version, error=shadow.error)
        score = shadow.scores[i]
        self.ctx.metrics.shadow_scored(scored.loaded.line, (score >= shadow.threshold) == anomalous)
        return ShadowVerdict(shadow.model_version, score, shadow.threshold)

    def _result_acked(self, item: WorkItem, sent_perf: float) -> None:
        # producer IO thread (delivery callback)
        request = _request(item)
        self.ctx.metrics.stage("produce", time.perf_counter() - sent_perf)
        self.ctx.metrics.result_acked(request.line, time.time() - request.sent_at_s)


# An item reaches each stage only after the previous one filled its field: these say so to the
# type checker and fail loudly if that ever stops being true.
def _request(item: WorkItem) -> Request:
    if item.request is None:
        raise RuntimeError(f"work item {item.tp}:{item.offset} reached a stage without a request")
    return item.request


def _loaded(item: WorkItem) -> LoadedLine:
    if item.loaded is None:
        raise RuntimeError(f"work item {item.tp}:{item.offset} reached a stage without a model")
    return item.loaded


def _decoded(item: WorkItem) -> DecodedImage:
    if item.decoded is None:
        raise RuntimeError(f"work item {item.tp}:{item.offset} reached a stage without an image")
    return item.decoded

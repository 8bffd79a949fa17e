"""The streaming worker: Kafka in, line models, results out, at least once (DESIGN.md §1, §4).

Threads and who owns what:

- **consumer thread** (``run``): the only user of the ``KafkaConsumer``. Polls, parses each
  record (``wire.parse_request``), registers it with the ``OffsetTracker``, hands it to the
  decode pool, pauses/resumes partitions (backpressure, unavailable lines), commits the acked
  prefix every ``COMMIT_INTERVAL_S`` and probes the broker.
- **decode pool** (``worker.decode_threads``): resolves the line's model (``Engine.get_line``,
  which may load from Redis), decodes + preprocesses the image, and queues it for inference.
- **inference thread**: owns the ``MicroBatcher``; runs one batch at a time through
  ``Engine.score`` so the device is never shared; hands maps/scores to the publisher.
- **publisher thread**: renders masks, encodes result JSON and produces. Encoding overlaps the
  next forward, which is what keeps end-to-end throughput close to model-only throughput.
- **producer IO thread** (kafka-python): delivery callbacks ``ack`` the tracker.

Nothing downstream of the consumer needs the consumer thread, so in-flight work keeps
finishing while ``poll()`` is blocked in a rebalance callback. That is what lets
``on_partitions_revoked`` wait (up to ``worker.rebalance_budget_s``) for the revoked
partitions' results to be acknowledged and commit them before ownership moves.

Failure paths, each named: ``BadRequest`` / ``DecodeFailed`` / unknown line -> dead letter with
its code; ``LineUnavailable`` -> the record is parked and its partition paused, retried every
``_PARK_RETRY_S``, dead-lettered ``line-unavailable`` after ``worker.line_unavailable_pause_s``;
a model exception -> ``model-error`` for that batch; a result the broker will not take within
``kafka.unreachable_timeout_s`` or a broker unreachable that long -> exit code 3, never
committing undelivered work; SIGTERM -> drain and exit 0 within ``worker.drain_grace_s``.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections import Counter as CounterDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from kafka import AsyncConsumerRebalanceListener, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from memkd_stream import wire
from memkd_stream.batcher import Batch, MicroBatcher
from memkd_stream.decode import DecodedImage, DecodeFailed, ImageDecoder, encode_mask_png
from memkd_stream.health import Heartbeats
from memkd_stream.kafka_clients import make_consumer, make_producer
from memkd_stream.logging import get_logger
from memkd_stream.metrics import WorkerMetrics
from memkd_stream.offsets import OffsetTracker

__all__ = ["EXIT_BROKER_UNREACHABLE", "EXIT_OK", "Worker"]

EXIT_OK = 0
EXIT_BROKER_UNREACHABLE = 3

# Commit the acked prefix this often; a crash re-delivers at most this much finished work.
COMMIT_INTERVAL_S = 1.0
# Broker liveness probe (ListOffsets) period and timeout; also refreshes the lag gauges.
PROBE_INTERVAL_S = 2.0
_PROBE_TIMEOUT_MS = 2000
# A parked (line-unavailable) record is retried this often until its pause budget runs out.
_PARK_RETRY_S = 1.0
# Margin kept from drain_grace_s for flush, commit and close after the drain wait.
_CLOSE_MARGIN_S = 3.0
_POLL_TIMEOUT_MS = 100
# Dead letters carry the image back; keep room for headers under max.message.bytes.
_DLQ_HEADER_ROOM = 64 * 1024


@dataclass
class _Item:
    """One request travelling through the pipeline."""

    tp: TopicPartition
    generation: int
    offset: int
    key: bytes | None
    value: bytes | None = field(repr=False)
    headers: list[tuple[str, bytes]]
    request: wire.Request | None = None
    loaded: Any = None  # engine.LoadedLine
    decoded: DecodedImage | None = None
    received_mono: float = 0.0
    decoded_mono: float = 0.0
    decode_s: float = 0.0
    retry: bool = False


@dataclass
class _Scored:
    """A batch's outputs waiting to be published."""

    items: list[_Item]
    loaded: Any
    maps: Any  # np.ndarray [B, H, W] float32
    scores: list[float]
    started_wall: float
    forward_s: float
    batch_wait_s: list[float]


class RebalanceHandler(AsyncConsumerRebalanceListener):
    """Runs on the consumer's IO thread while ``poll()`` waits (kafka-python 3.x).

    Revoke: wait (bounded) for the revoked partitions' in-flight records, then commit their
    acked prefix with an awaited async commit (the blocking ``commit()`` is forbidden on the IO
    thread), then forget them. Heartbeats pause while we wait; the budget is far below
    ``session.timeout.ms`` (45 s), so the member is not evicted for it.
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Any) -> None:
        offsets = self.worker._finish_revoked(set(revoked))
        if offsets:
            try:
                await self.worker._consumer.commit_async(offsets)
                self.worker._tracker_mark(offsets)
            except Exception as exc:
                self.worker.log.warning(
                    "commit on revoke failed; the next owner re-reads from the last commit",
                    error=str(exc),
                )

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.worker._on_assigned(set(assigned))

    async def on_partitions_lost(self, lost: Any) -> None:
        self.worker._forget(set(lost), reason="lost")


class Worker:
    """One worker process's pipeline. ``run()`` blocks and returns the exit code."""

    def __init__(
        self,
        settings: Any,
        engine: Any,
        *,
        metrics: WorkerMetrics | None = None,
        heartbeats: Heartbeats | None = None,
        consumer_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.kafka = settings.kafka
        self.ws = settings.worker
        self.engine = engine
        self.metrics = metrics or WorkerMetrics()
        self.heartbeats = heartbeats or Heartbeats()
        self.log = get_logger("memkd_stream.worker")
        self.worker_id = str(self.ws.worker_id)
        self.decoder = ImageDecoder(int(self.ws.max_image_pixels))
        self.tracker = OffsetTracker()
        self._consumer_overrides = consumer_overrides or {}
        self._consumer: Any = None
        self._producer: Any = None
        self._stop = threading.Event()
        self._draining = threading.Event()
        self._fatal: str | None = None
        self._exit_code = EXIT_OK
        self._lock = threading.RLock()
        # partition state (guarded by _lock): parked records and retries in the decode pool
        self._parked: dict[TopicPartition, list[tuple[float, _Item]]] = {}
        self._retrying: CounterDict[TopicPartition] = CounterDict()
        self._unavailable_since: dict[str, float] = {}
        self._paused: set[TopicPartition] = set()
        self._backpressure = False
        self._closing = False
        self._next_offset: dict[TopicPartition, int] = {}
        self._broker_ok_at = time.monotonic()
        self._broker_ok = False
        self._infer_q: queue.Queue[_Item] = queue.Queue()
        self._publish_q: queue.Queue[_Scored | None] = queue.Queue()
        self._control_q: queue.Queue[tuple[str, _Item]] = queue.Queue()
        self._decode_pool: ThreadPoolExecutor | None = None
        self._threads: list[threading.Thread] = []
        stale = max(60.0, 3 * float(self.ws.rebalance_budget_s), float(self.ws.drain_grace_s))
        self.heartbeats.register("consumer", stale)
        self.heartbeats.register("inference", stale)
        high = int(self.ws.queue_max_records)
        self._high_water = max(1, high)
        self._low_water = max(0, high // 2)
        self._max_dlq_value = max(0, int(self.kafka.max_message_bytes) - _DLQ_HEADER_ROOM)

    # ------------------------------------------------------------------ public surface
    def stop(self) -> None:
        """Ask the worker to drain and exit (safe from a signal handler)."""
        self._stop.set()

    def ready_checks(self) -> dict[str, bool]:
        """Readiness of DESIGN.md §6: teachers loaded and broker reachable."""
        return {
            "teachers_loaded": bool(self.engine.teachers_loaded),
            "broker_reachable": self._broker_ok,
        }

    def run(self) -> int:
        """Consume until stopped; returns the process exit code."""
        try:
            self._start_clients()
        except Exception as exc:
            self.log.error(
                "Kafka broker unreachable at start; exiting so the worker is restarted",
                bootstrap=self.kafka.bootstrap_servers,
                error=str(exc),
            )
            self._shutdown_threads()
            return EXIT_BROKER_UNREACHABLE
        self._start_threads()
        self.log.info(
            "worker consuming",
            topic=self.kafka.inspect_topic,
            group=self.kafka.group_id,
            worker=self.worker_id,
        )
        try:
            self._loop()
        except Exception as exc:  # a bug in the loop must not look like a clean exit
            self.log.exception("consumer loop crashed", error=str(exc))
            self._fatal = self._fatal or f"consumer loop crashed: {exc}"
            self._exit_code = EXIT_BROKER_UNREACHABLE
        if self._fatal is None:
            self._drain()
        else:
            self._abort()
        return self._exit_code

    # ------------------------------------------------------------------ setup
    def _start_clients(self) -> None:
        kafka = self.kafka
        client_id = f"{kafka.client_id}-{self.worker_id}"
        self._producer = make_producer(kafka, client_id=client_id)
        overrides = {
            "bootstrap_timeout_ms": int(float(kafka.unreachable_timeout_s) * 1000),
            **self._consumer_overrides,
        }
        self._consumer = make_consumer(
            kafka,
            client_id=client_id,
            max_poll_records=max(1, int(self.ws.queue_max_records) // 4),
            **overrides,
        )
        self._consumer.subscribe([kafka.inspect_topic], listener=RebalanceHandler(self))
        self._broker_ok = True
        self._broker_ok_at = time.monotonic()
        self.metrics.broker_reachable.set(1)

    def _start_threads(self) -> None:
        self._decode_pool = ThreadPoolExecutor(
            max_workers=max(1, int(self.ws.decode_threads)), thread_name_prefix="memkd-decode"
        )
        for name, target in (
            ("memkd-infer", self._infer_loop),
            ("memkd-publish", self._publish_loop),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    # ------------------------------------------------------------------ consumer thread
    def _loop(self) -> None:
        last_commit = last_probe = time.monotonic()
        while not self._stop.is_set() and self._fatal is None:
            self.heartbeats.beat("consumer")
            self._handle_control()
            self._update_pauses()
            try:
                batch = self._consumer.poll(timeout_ms=_POLL_TIMEOUT_MS)
            except KafkaError as exc:  # e.g. a rebalance callback failed; the group recovers
                self.log.warning("poll failed; continuing", error=str(exc))
                batch = {}
            for tp, records in batch.items():
                for record in records:
                    self._accept(tp, record)
            now = time.monotonic()
            if now - last_commit >= COMMIT_INTERVAL_S:
                self._commit()
                last_commit = now
            if now - last_probe >= PROBE_INTERVAL_S:
                self._probe_broker()
                last_probe = time.monotonic()
            self.metrics.in_flight.set(self.tracker.pending())

    def _accept(self, tp: TopicPartition, record: Any) -> None:
        generation = self.tracker.dispatch(tp, record.offset)
        self._next_offset[tp] = record.offset + 1
        self.metrics.record_in()
        headers = [(k, v) for k, v in (record.headers or [])]
        item = _Item(
            tp=tp,
            generation=generation,
            offset=record.offset,
            key=record.key,
            value=record.value,
            headers=headers,
            received_mono=time.monotonic(),
        )
        try:
            item.request = wire.parse_request(
                tp.topic, tp.partition, record.offset, record.key, record.value, headers
            )
        except wire.BadRequest as exc:
            self._dead_letter(item, exc.code, exc.detail, offset=record.offset)
            return
        assert self._decode_pool is not None
        self._decode_pool.submit(self._decode, item)

    def _handle_control(self) -> None:
        now = time.monotonic()
        while True:
            try:
                kind, item = self._control_q.get_nowait()
            except queue.Empty:
                break
            with self._lock:
                if kind == "park":
                    if self._stale(item):
                        continue
                    self._parked.setdefault(item.tp, []).append((now + _PARK_RETRY_S, item))
                elif kind == "retry_done":
                    self._retrying[item.tp] -= 1
                    if self._retrying[item.tp] <= 0:
                        del self._retrying[item.tp]
        with self._lock:
            for tp in list(self._parked):
                due = [it for at, it in self._parked[tp] if at <= now]
                if not due:
                    continue
                self._parked[tp] = [(at, it) for at, it in self._parked[tp] if at > now]
                if not self._parked[tp]:
                    del self._parked[tp]
                for it in due:
                    it.retry = True
                    self._retrying[tp] += 1
                    assert self._decode_pool is not None
                    self._decode_pool.submit(self._decode, it)

    def _update_pauses(self) -> None:
        assigned = set(self._consumer.assignment())
        pending = self.tracker.pending()
        if not self._backpressure and pending >= self._high_water:
            self._backpressure = True
            self.log.info("backpressure: pausing all partitions", in_flight=pending)
        elif self._backpressure and pending <= self._low_water:
            self._backpressure = False
            self.log.info("backpressure released", in_flight=pending)
        with self._lock:
            blocked = set(self._parked) | set(self._retrying)
        want = set(assigned) if (self._backpressure or self._draining.is_set()) else blocked
        want &= assigned
        to_pause = want - self._paused
        to_resume = (self._paused & assigned) - want
        if to_pause:
            self._consumer.pause(*to_pause)
        if to_resume:
            self._consumer.resume(*to_resume)
        self._paused = want
        self.metrics.paused.set(len(want))

    def _commit(self, timeout_ms: int = 5000) -> None:
        offsets = self._committable()
        if not offsets:
            return
        try:
            self._consumer.commit(offsets, timeout_ms=timeout_ms)
        except Exception as exc:
            self.log.warning("offset commit failed; retrying next round", error=str(exc))
            return
        self._tracker_mark(offsets)

    def _committable(self, only: set[TopicPartition] | None = None) -> dict[Any, Any]:
        assigned = set(self._consumer.assignment()) if only is None else only
        return {
            tp: OffsetAndMetadata(offset, "", -1)
            for tp, offset in self.tracker.committable().items()
            if tp in assigned
        }

    def _tracker_mark(self, offsets: dict[Any, Any]) -> None:
        self.tracker.mark_committed({tp: om.offset for tp, om in offsets.items()})

    def _probe_broker(self) -> None:
        """ListOffsets on the assigned partitions (a real broker round trip, and the lag
        gauges); with none assigned, a TCP connect to a bootstrap server, so that a missing
        topic is not mistaken for a dead broker."""
        assigned = sorted(self._consumer.assignment())
        ends: dict[Any, int] = {}
        try:
            if assigned:
                ends = self._consumer.end_offsets(assigned, timeout_ms=_PROBE_TIMEOUT_MS)
            else:
                _connect_any(self.kafka.bootstrap_servers, _PROBE_TIMEOUT_MS / 1000)
        except Exception as exc:
            down_s = time.monotonic() - self._broker_ok_at
            if self._broker_ok:
                self.log.warning("Kafka broker unreachable; retrying", error=str(exc))
            self._broker_ok = False
            self.metrics.broker_reachable.set(0)
            if down_s > float(self.kafka.unreachable_timeout_s):
                self._fatal = (
                    f"Kafka broker {self.kafka.bootstrap_servers} unreachable for "
                    f"{down_s:.0f}s (limit kafka.unreachable_timeout_s="
                    f"{self.kafka.unreachable_timeout_s}); exiting so the worker is restarted"
                )
                self._exit_code = EXIT_BROKER_UNREACHABLE
            return
        if not self._broker_ok:
            self.log.info("Kafka broker reachable again")
        self._broker_ok = True
        self._broker_ok_at = time.monotonic()
        self.metrics.broker_reachable.set(1)
        for tp in assigned:
            position = self._next_offset.get(tp)
            if position is not None and ends.get(tp) is not None:
                self.metrics.lag(tp.topic, tp.partition, max(0, ends[tp] - position))

    # ------------------------------------------------------------------ rebalance (IO thread)
    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        self.metrics.partitions_assigned.set(len(self._consumer.assignment()))
        self.log.info("partitions assigned", partitions=_names(assigned))

    def _finish_revoked(self, revoked: set[TopicPartition]) -> dict[Any, Any]:
        """Finish (or abandon after the budget) the revoked partitions' in-flight records and
        return their committable offsets; they are forgotten afterwards."""
        if self._closing:
            # closing: the drain already committed; after a fatal error nothing more is
            # committed (the broker is likely gone and the close must not wait on it)
            offsets = {} if self._fatal else self._committable(only=revoked)
            self._forget(revoked, reason="closed")
            return offsets
        with self._lock:
            # Parked records wait for a line that may stay down longer than the budget: abandon
            # them now; the next owner retries them from the last commit.
            waiting = {tp for tp in revoked if tp not in self._parked}
        budget = float(self.ws.rebalance_budget_s)
        done = self.tracker.wait_idle(waiting, budget)
        offsets = self._committable(only=revoked)
        self.log.info(
            "partitions revoked",
            partitions=_names(revoked),
            finished=done,
            abandoned=self.tracker.pending(revoked),
            commit={f"{tp.topic}:{tp.partition}": om.offset for tp, om in offsets.items()},
        )
        self._forget(revoked, reason="revoked")
        return offsets

    def _forget(self, tps: set[TopicPartition], *, reason: str) -> None:
        with self._lock:
            for tp in tps:
                self._parked.pop(tp, None)
                self._retrying.pop(tp, None)
                self._paused.discard(tp)
                self._next_offset.pop(tp, None)
                self.tracker.forget(tp)
                self.metrics.drop_lag(tp.topic, tp.partition)
        if reason == "lost":
            self.log.warning("partitions lost (evicted from the group)", partitions=_names(tps))
        with contextlib.suppress(Exception):
            self.metrics.partitions_assigned.set(len(set(self._consumer.assignment()) - tps))

    def _stale(self, item: _Item) -> bool:
        """True when the item's partition was forgotten (revoked/lost) after it was read."""
        return not self._tracked(item)

    def _tracked(self, item: _Item) -> bool:
        return self.tracker.generation(item.tp) == item.generation

    # ------------------------------------------------------------------ decode pool
    def _decode(self, item: _Item) -> None:
        try:
            self._decode_one(item)
        except Exception as exc:  # never lose a record to an unexpected error
            self.log.exception("decode stage failed", **self._fields(item))
            self._dead_letter(item, "decode-error", f"internal decode failure: {exc}")
        finally:
            if item.retry:
                item.retry = False
                self._control_q.put(("retry_done", item))

    def _decode_one(self, item: _Item) -> None:
        if not self._tracked(item):
            return
        request = item.request
        assert request is not None
        started = time.perf_counter()
        try:
            loaded = self.engine.get_line(request.line)
        except Exception as exc:
            code = getattr(exc, "code", "")
            if code == "unknown-line":
                self._dead_letter(item, "unknown-line", str(exc))
                return
            self._line_unavailable(item, exc)
            return
        with self._lock:
            if self._unavailable_since.pop(request.line, None) is not None:
                self.metrics.set_unavailable(request.line, False)
                self.log.info("line available again", line=request.line)
        size, mean, std, roi = self.engine.preprocess_params(loaded)
        try:
            decoded = self.decoder.decode(request.value, size=size, mean=mean, std=std, roi=roi)
        except DecodeFailed as exc:
            self._dead_letter(item, exc.code, exc.detail)
            return
        item.loaded = loaded
        item.decoded = decoded
        item.decode_s = time.perf_counter() - started
        item.decoded_mono = time.monotonic()
        self.metrics.stage("decode", item.decode_s)
        self._infer_q.put(item)

    def _line_unavailable(self, item: _Item, exc: BaseException) -> None:
        line = item.request.line if item.request else "?"
        now = time.monotonic()
        pause_s = float(self.ws.line_unavailable_pause_s)
        with self._lock:
            since = self._unavailable_since.setdefault(line, now)
            first = since == now
        if first:
            self.metrics.set_unavailable(line, True)
            self.log.warning(
                "line model unavailable; pausing its partition and retrying",
                pause_s=pause_s,
                error=str(exc),
                **self._fields(item),
            )
        if now - since >= pause_s:
            self._dead_letter(
                item,
                "line-unavailable",
                f"line {line!r} could not be loaded for {now - since:.0f}s "
                f"(worker.line_unavailable_pause_s={pause_s}): {exc}",
            )
            return
        self._control_q.put(("park", item))

    # ------------------------------------------------------------------ inference thread
    def _infer_loop(self) -> None:
        batcher: MicroBatcher[_Item] = MicroBatcher(
            int(self.ws.max_batch), float(self.ws.max_wait_ms) / 1000.0
        )
        while True:
            self.heartbeats.beat("inference")
            deadline = batcher.next_deadline()
            timeout = 0.2 if deadline is None else min(0.2, max(0.0, deadline - time.monotonic()))
            try:
                item = self._infer_q.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is not None:
                if item is _SENTINEL:
                    break
                self._add(batcher, item)
                while True:  # take everything already decoded: bigger batches, same latency
                    try:
                        more = self._infer_q.get_nowait()
                    except queue.Empty:
                        break
                    if more is _SENTINEL:
                        self._infer_q.put(more)
                        break
                    self._add(batcher, more)
            ready = batcher.pop_all() if self._draining.is_set() else batcher.pop_ready()
            for group in ready:
                self._run_batch(group)
        for group in batcher.pop_all():
            self._run_batch(group)
        self._publish_q.put(None)

    @staticmethod
    def _add(batcher: MicroBatcher[_Item], item: _Item) -> None:
        batcher.add((item.loaded.line, item.loaded.version, item.loaded.backbone), item)

    def _run_batch(self, group: Batch[_Item]) -> None:
        items = [it for it in group.items if self._tracked(it)]
        if not items:
            return
        loaded = items[0].loaded
        now = time.monotonic()
        waits = [now - it.decoded_mono for it in items]
        started_wall = time.time()
        t0 = time.perf_counter()
        try:
            batch = torch.stack([it.decoded.tensor for it in items])  # type: ignore[union-attr]
            result = self.engine.score(loaded, batch)
            maps = result.maps[:, 0].detach().float().cpu().numpy()
            scores = [float(s) for s in result.scores.detach().float().cpu()]
        except Exception as exc:
            self.log.exception(
                "model failed on a batch", line=loaded.line, version=loaded.version, size=len(items)
            )
            for it in items:
                self._dead_letter(it, "model-error", f"{type(exc).__name__}: {exc}")
            return
        forward_s = time.perf_counter() - t0
        self.metrics.batch(len(items), forward_s)
        self._publish_q.put(_Scored(items, loaded, maps, scores, started_wall, forward_s, waits))

    # ------------------------------------------------------------------ publisher thread
    def _publish_loop(self) -> None:
        from memkd.anomaly import render_mask

        while True:
            scored = self._publish_q.get()
            if scored is None:
                break
            try:
                self._publish(scored, render_mask)
            except Exception as exc:
                self.log.exception("publishing a batch failed", error=str(exc))
                for it in scored.items:
                    self._dead_letter(it, "model-error", f"result encoding failed: {exc}")

    def _publish(self, scored: _Scored, render_mask: Any) -> None:
        loaded = scored.loaded
        threshold = float(loaded.model.calibration.threshold)
        n = len(scored.items)
        for i, item in enumerate(scored.items):
            request = item.request
            assert request is not None and item.decoded is not None
            t0 = time.perf_counter()
            score = scored.scores[i]
            try:
                mask = render_mask(scored.maps[i], threshold)
                png = encode_mask_png(mask)
                now_wall = time.time()
                value = wire.encode_result(
                    request,
                    model_version=loaded.model_version,
                    score=score,
                    threshold=threshold,
                    image_hw=(item.decoded.height, item.decoded.width),
                    mask_png=png,
                    mask_hw=(int(mask.shape[0]), int(mask.shape[1])),
                    timing_ms={
                        "queue": (scored.started_wall - request.received_at) * 1000.0,
                        "infer": scored.forward_s * 1000.0,
                        "total": (now_wall - request.received_at) * 1000.0,
                    },
                    worker=self.worker_id,
                )
            except ValueError as exc:
                self._dead_letter(item, "model-error", f"unusable model output: {exc}")
                continue
            encode_s = time.perf_counter() - t0
            self.metrics.stage("encode", encode_s)
            self.metrics.stage("batch_wait", scored.batch_wait_s[i])
            self.metrics.stage("forward", scored.forward_s / n)
            self.metrics.queued(scored.started_wall - request.received_at)
            self.metrics.scored(loaded.line, loaded.version, score, score >= threshold)
            self._send(
                self.kafka.results_topic,
                item,
                key=request.line.encode("utf-8"),
                value=value,
                headers=wire.result_headers(request),
                on_ack=self._result_acked,
            )

    def _result_acked(self, item: _Item, sent_perf: float) -> None:
        request = item.request
        assert request is not None
        self.metrics.stage("produce", time.perf_counter() - sent_perf)
        now = time.time()
        e2e = now - request.sent_at_ms / 1000.0 if request.sent_at_ms else now - request.received_at
        self.metrics.result_acked(request.line, e2e)

    # ------------------------------------------------------------------ producing
    def _dead_letter(
        self, item: _Item, code: str, detail: str, *, offset: int | None = None
    ) -> None:
        offset = item.offset if offset is None else offset
        letter = wire.dead_letter(
            item.tp.topic,
            item.tp.partition,
            offset,
            item.key,
            item.value
            if item.value is not None
            else (item.request.value if item.request else None),
            item.headers,
            code,
            detail,
            self._max_dlq_value,
        )
        self.log.warning(
            "dead-lettered", code=code, detail=detail[:300], **self._fields(item, offset)
        )

        def acked(it: _Item, _sent: float) -> None:
            self.metrics.dead_lettered(code)

        self._send(
            self.kafka.dlq_topic,
            item,
            key=letter.key,
            value=letter.value,
            headers=letter.headers,
            on_ack=acked,
            offset=offset,
        )

    def _send(
        self,
        topic: str,
        item: _Item,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        on_ack: Any,
        offset: int | None = None,
    ) -> None:
        offset = item.offset if offset is None else offset
        if not self._tracked(item):
            return  # partition revoked and abandoned: the next owner produces it
        sent = time.perf_counter()
        try:
            future = self._producer.send(topic, key=key, value=value, headers=headers)
        except Exception as exc:
            self._delivery_failed(item, offset, exc)
            return

        def ok(_metadata: Any) -> None:
            if self.tracker.ack(item.tp, offset, item.generation):
                on_ack(item, sent)

        future.add_callback(ok)
        future.add_errback(lambda exc: self._delivery_failed(item, offset, exc))

    def _delivery_failed(self, item: _Item, offset: int, exc: BaseException) -> None:
        # The idempotent producer already retried for delivery_timeout_ms
        # (= kafka.unreachable_timeout_s). The record stays unacknowledged, so it is never
        # committed; exiting lets a restarted worker re-read it.
        if self._fatal is None:
            self._fatal = f"result delivery failed: {type(exc).__name__}: {exc}"
            self._exit_code = EXIT_BROKER_UNREACHABLE
        self.log.error(
            "delivery failed; the record stays uncommitted",
            error=str(exc),
            **self._fields(item, offset),
        )

    # ------------------------------------------------------------------ shutdown
    def _drain(self) -> None:
        grace = float(self.ws.drain_grace_s)
        started = time.monotonic()
        self.log.info("draining: polling stopped", in_flight=self.tracker.pending())
        self._draining.set()
        with contextlib.suppress(Exception):
            self._update_pauses()
        with self._lock:
            parked = set(self._parked) | set(self._retrying)
        # Parked records would wait for their line; they stay uncommitted for the next owner.
        waiting = set(self.tracker.partitions()) - parked
        wait_s = max(0.0, grace - _CLOSE_MARGIN_S)
        while time.monotonic() - started < wait_s and self._fatal is None:
            self._handle_control()
            if self.tracker.wait_idle(waiting, 0.2):
                break
        self._shutdown_threads()
        if self._producer is not None:
            try:
                self._producer.flush(timeout=max(0.5, grace - (time.monotonic() - started) - 1.5))
            except Exception as exc:
                self.log.warning("producer flush incomplete", error=str(exc))
        if self._fatal is None:
            self._commit(timeout_ms=2000)
        self._closing = True
        self.log.info(
            "drained",
            abandoned=self.tracker.pending(),
            seconds=round(time.monotonic() - started, 2),
        )
        # Leaving the group promptly hands our partitions over now rather than after the
        # session timeout; give it what is left of the grace period (at least 2 s).
        self._close_clients(timeout_s=max(2.0, grace - (time.monotonic() - started) - 0.5))

    def _abort(self) -> None:
        """Fatal path: no commit at all; close quickly so the orchestrator restarts us."""
        self.log.error(self._fatal or "fatal error", exit_code=self._exit_code)
        self._closing = True
        self._draining.set()
        self._shutdown_threads(wait=False)
        self._close_clients(timeout_s=0.5, leave_group=False)

    def _shutdown_threads(self, wait: bool = True) -> None:
        if self._decode_pool is not None:
            self._decode_pool.shutdown(wait=wait, cancel_futures=not wait)
        if self._threads:
            self._infer_q.put(_SENTINEL)
            if wait:
                for thread in self._threads:
                    thread.join(timeout=10)
            self._threads = []

    def _close_clients(self, timeout_s: float, leave_group: bool = True) -> None:
        if self._consumer is not None:
            try:
                if leave_group:
                    self._consumer.close(autocommit=False, timeout_ms=int(timeout_s * 1000))
                else:
                    self._consumer.close(autocommit=False, timeout_ms=100)
            except Exception as exc:
                self.log.warning("consumer close failed", error=str(exc))
        if self._producer is not None:
            try:
                self._producer.close(timeout=timeout_s)
            except Exception as exc:
                self.log.warning("producer close failed", error=str(exc))

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _fields(item: _Item, offset: int | None = None) -> dict[str, Any]:
        req = item.request
        return {
            "line": req.line if req else None,
            "id": req.id if req else None,
            "partition": item.tp.partition,
            "offset": item.offset if offset is None else offset,
        }


_SENTINEL: Any = object()


def _connect_any(bootstrap: str | list[str], timeout_s: float) -> None:
    """Open (and close) a TCP connection to the first bootstrap server that accepts one."""
    servers = bootstrap.split(",") if isinstance(bootstrap, str) else list(bootstrap)
    error: OSError | None = None
    for server in servers:
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout_s):
                return
        except OSError as exc:
            error = exc
    raise error or OSError("no bootstrap servers configured")


def _names(tps: set[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}:{tp.partition}" for tp in tps)

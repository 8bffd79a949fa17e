"""Hot swap: follow line activations in Redis and swap held line models in the background.

Each activation, and each change of a line's shadow version, publishes
``{"line", "version", "action"}`` on the store's events channel (DESIGN.md §5). Pub/sub is
fire-and-forget — a worker that is disconnected, or slow to subscribe, misses events — so the
channel is only a hint: the source of truth is each line's ``current`` (and ``shadow``) key.
``HotSwapper`` therefore re-reads both for every held line after each (re)subscribe and every
``refresh_interval_s``, and on an event about a held line. A missed event delays a swap (or a
shadow) by at most one refresh interval; it never loses it.

Loading runs on this thread (``Engine.swap``), never on the worker's: the worker keeps scoring on
the old version and picks up the new one between batches. Lines the worker does not hold are
ignored; they load on demand at their active version.

The lines' late policy overrides (DESIGN.md §3) are read here too, so the inference thread never
waits on Redis for them: all of them at every re-read (one MGET), and a line's own on every event
naming it (``memkd-stream lines late-policy`` publishes one).

Redis outages: the loop backs off (bounded, jittered) and keeps trying; it logs one warning when an
outage starts and one info line when it ends, not one per retry.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from typing import TYPE_CHECKING, Any

from memkd_stream.contract.line_id import validate_line_id
from memkd_stream.log import Logger, get_logger

if TYPE_CHECKING:
    import redis

    from memkd_stream.lines.store import LineStore
    from memkd_stream.worker.engine import Engine
    from memkd_stream.worker.health import Heartbeats

__all__ = ["HotSwapper"]

# Bounded exponential backoff while Redis is unreachable.
_BACKOFF_START_S = 0.2
_BACKOFF_MAX_S = 5.0
# Longest blocking wait on the pub/sub socket: bounds how long stop() waits for the loop.
_POLL_S = 0.25
# The loop beats at least every _BACKOFF_MAX_S, or after one Redis call that hangs for its
# socket timeout and retries (redis.unreachable_timeout_s, 30 s by default): past this, stuck.
_STALE_S = 120.0


class HotSwapper:
    """Background thread that keeps the engine's held lines at their active versions.

    Args:
        store: where ``current`` and the events channel are.
        engine: whose held lines are kept current (``Engine.swap`` counts swaps itself).
        refresh_interval_s: how often ``current`` of every held line is re-read.
        log: a structlog logger (default: this module's).
        client: the ``redis.Redis`` to subscribe with (default: the store's client).
        heartbeats: where the thread reports that it is alive (``hot-swap``), stuck after
            ``stuck_after_s`` or one Redis call's worst case, whichever is longer.
    """

    def __init__(
        self,
        store: LineStore,
        engine: Engine,
        refresh_interval_s: float = 30.0,
        log: Logger | None = None,
        *,
        client: redis.Redis | None = None,
        heartbeats: Heartbeats | None = None,
        stuck_after_s: float = 0.0,
    ) -> None:
        self.store = store
        self.engine = engine
        self.refresh_interval_s = float(refresh_interval_s)
        self.log = log if log is not None else get_logger(__name__)
        self._client = client if client is not None else store.client
        self._heartbeats = heartbeats
        if heartbeats is not None:
            heartbeats.register("hot-swap", max(stuck_after_s, _STALE_S))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connected = threading.Event()
        self._outage_since: float | None = None
        self._delay = _BACKOFF_START_S
        self.reconciles = 0  # completed re-reads of all held lines (for tests and health)

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the background thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="memkd-hot-swap", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the thread, waiting at most ``timeout_s``. A Redis call in progress (bounded by
        the client's timeouts and retries) may finish after that; the thread then exits without
        starting another (it is a daemon, and drops what it was loading)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                self.log.warning("hot-swap thread still busy at stop", timeout_s=timeout_s)

    @property
    def connected(self) -> bool:
        """Subscribed to the events channel right now."""
        return self._connected.is_set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ----------------------------------------------------------------- loop
    def _beat(self) -> None:
        if self._heartbeats is not None:
            self._heartbeats.beat("hot-swap")

    def _run(self) -> None:
        while not self._stop.is_set():
            self._beat()
            pubsub = None
            try:
                pubsub = self._client.pubsub()
                pubsub.subscribe(self.store.events_channel)
                self._listen(pubsub)
            except Exception as exc:
                self._connected.clear()
                if self._outage_since is None:
                    self._outage_since = time.monotonic()
                    self._delay = _BACKOFF_START_S
                    self.log.warning(
                        "hot swap lost Redis; held lines keep serving, retrying",
                        error=str(exc),
                        code=getattr(exc, "code", type(exc).__name__),
                    )
                self._stop.wait(self._delay * random.uniform(0.5, 1.0))
                self._delay = min(self._delay * 2, _BACKOFF_MAX_S)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):  # closing a dead connection may fail
                        pubsub.close()
        self._connected.clear()

    def _listen(self, pubsub: Any) -> None:
        """Handle events and periodic re-reads until stopped; Redis errors propagate.

        A ``subscribe`` confirmation arrives after the first subscribe and after every silent
        reconnect (redis-py re-subscribes by itself): each one triggers a full re-read, because
        events published while we were not subscribed are gone.
        """
        next_refresh: float | None = None  # no periodic re-read before the first subscribe
        while not self._stop.is_set():
            self._beat()
            wait = _POLL_S
            if next_refresh is not None:
                wait = max(0.0, min(_POLL_S, next_refresh - time.monotonic()))
            message = pubsub.get_message(timeout=wait)
            kind = message.get("type") if message is not None else None
            if kind == "subscribe":
                self.reconcile()
                self._on_connected()
                next_refresh = time.monotonic() + self.refresh_interval_s
            elif kind == "message":
                self._on_event(message.get("data"))
            if next_refresh is not None and time.monotonic() >= next_refresh:
                self.reconcile()
                next_refresh = time.monotonic() + self.refresh_interval_s

    def _on_connected(self) -> None:
        self._connected.set()
        if self._outage_since is not None:
            self.log.info(
                "hot swap reconnected to Redis",
                outage_s=round(time.monotonic() - self._outage_since, 1),
            )
            self._outage_since = None

    def _on_event(self, data: Any) -> None:
        try:
            event = json.loads(data)
            line = validate_line_id(str(event["line"]))  # BadLineId is a ValueError
        except (TypeError, ValueError, KeyError) as exc:
            self.log.warning("ignored a malformed line event", error=str(exc))
            return
        self.engine.line_activated(line)
        self.engine.late_policies.set(line, self.store.late_policy(line))
        if line not in self.engine.held_lines():
            return
        # The event says which version was activated, but events can arrive late or be missed:
        # the line's current version in Redis is the truth.
        self._sync_line(line)

    def prime(self) -> None:
        """At start-up, before consuming: read the set of lines and their late policies, so the
        first records are judged by the overrides. Redis down: logged; the re-reads retry."""
        self.engine.directory.refresh()
        try:
            self.read_late_policies()
        except Exception as exc:
            self.log.warning(
                "cannot read the lines' late policies; the global one applies until Redis answers",
                error=str(exc),
            )

    def reconcile(self) -> None:
        """Re-read the set of lines and ``current`` of every held line; swap those that changed."""
        self.engine.directory.refresh()
        self.read_late_policies()
        for line in sorted(self.engine.held_lines()):
            if self._stop.is_set():
                return
            self._sync_line(line)
        self.reconciles += 1

    def read_late_policies(self) -> None:
        """Re-read the late policy override of every known line (one round trip); Redis errors
        propagate, and the overrides read last stay in force."""
        lines = self.engine.directory.known_lines()
        self.engine.late_policies.replace(self.store.late_policies(lines))

    def _sync_line(self, line: str) -> None:
        version = self.store.current(line)
        held = self.engine.held_lines().get(line)
        if held is None:
            return
        if version is not None and held != version:
            self.engine.swap(line, version)  # logs and counts the swap or the refusal
        self.engine.sync_shadow(line, self.store.shadow(line))

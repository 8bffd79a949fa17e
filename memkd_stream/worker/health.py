"""The worker's HTTP endpoints: ``/metrics``, ``/healthz`` and ``/readyz`` (DESIGN.md §6).

- ``/healthz`` (liveness): 503 ``starting`` until start-up (teachers, preload) is over, which
  the Deployment's startupProbe waits for, so a long preload is never killed by liveness; then
  200 while every long-lived thread (consumer, decode pool, inference, publisher, hot swap) has
  beaten within its limit and no decode or load has run past its own; 503 ``stuck`` otherwise
  (Kubernetes restarts the pod), and 503 ``stopping`` once the run has turned fatal.
- ``/readyz`` (readiness): the teachers are loaded and the broker is reachable, and the run is
  not stopping. Deliberately not "partitions assigned": a spare pod with no partition is ready to
  take one on the next rebalance. Per-line state lives in the metrics, not here.

One small threaded ``http.server``; the bodies are JSON so a human with curl sees why.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["HealthServer", "Heartbeats"]


class Heartbeats:
    """Last-beat times of named loops, each with its own staleness limit, and pieces of work
    (a decode, a model load) that must each finish within theirs.

    A loop that beats in its own loop goes stale when it hangs and when its thread dies; a pool
    thread has no loop of its own, so it reports each piece of work instead (``working``).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._beats: dict[str, tuple[float, float]] = {}
        self._work: dict[int, tuple[str, float, float]] = {}
        self._lock = threading.Lock()
        self._next = itertools.count()

    def register(self, name: str, stale_after_s: float) -> None:
        with self._lock:
            self._beats[name] = (self._clock(), stale_after_s)

    def beat(self, name: str) -> None:
        with self._lock:
            _, limit = self._beats.get(name, (0.0, 60.0))
            self._beats[name] = (self._clock(), limit)

    def unregister(self, name: str) -> None:
        """A loop that has finished (start-up) is no longer watched."""
        with self._lock:
            self._beats.pop(name, None)

    @contextmanager
    def working(self, name: str, limit_s: float) -> Iterator[None]:
        """A piece of work that counts as stuck while it runs longer than ``limit_s``."""
        key = next(self._next)
        with self._lock:
            self._work[key] = (name, self._clock(), limit_s)
        try:
            yield
        finally:
            with self._lock:
                del self._work[key]

    def ages(self) -> dict[str, tuple[float, float]]:
        """Every watched loop and running piece of work: (seconds since its beat or start, its
        limit), the oldest piece per name (what ``/metrics`` shows next to ``/healthz``)."""
        now = self._clock()
        with self._lock:
            out = {name: (now - at, limit) for name, (at, limit) in self._beats.items()}
            for name, started, limit in self._work.values():
                if name not in out or now - started > out[name][0]:
                    out[name] = (now - started, limit)
            return out

    def stale(self) -> dict[str, float]:
        """Loops and work past their limit, with seconds since the beat (or the start)."""
        now = self._clock()
        with self._lock:
            out = {
                name: round(now - at, 1)
                for name, (at, limit) in self._beats.items()
                if now - at > limit
            }
            for name, started, limit in self._work.values():
                if now - started > limit:
                    out[name] = max(out.get(name, 0.0), round(now - started, 1))
            return out


ReadyCheck = Callable[[], dict[str, bool]]


class HealthServer:
    """Serves the three endpoints on ``host:port`` from a daemon thread (port 0 = any free)."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        heartbeats: Heartbeats,
        ready_checks: ReadyCheck,
        stopping: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.registry = registry
        self.heartbeats = heartbeats
        self.ready_checks = ready_checks
        self.stopping = stopping
        self._started = threading.Event()
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="memkd-health", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def started(self) -> None:
        """Start-up (teachers, preload) is over: liveness is judged from now on."""
        self._started.set()

    def healthz(self) -> tuple[int, dict[str, object]]:
        stale = self.heartbeats.stale()
        if not self._started.is_set():
            # 503 until start-up is over (the startupProbe's budget covers it, not liveness's)
            return 503, {"status": "stuck" if stale else "starting", "stale_s": stale}
        reason = self.stopping()
        if reason is not None:
            return 503, {"status": "stopping", "reason": reason}
        if stale:
            return 503, {"status": "stuck", "stale_s": stale}
        return 200, {"status": "ok"}

    def readyz(self) -> tuple[int, dict[str, object]]:
        reason = self.stopping()
        if reason is not None:
            return 503, {"status": "stopping", "reason": reason}
        try:
            checks = self.ready_checks()
        except Exception as exc:  # a failing check is "not ready", never a crashed endpoint
            return 503, {"status": "not-ready", "error": str(exc)}
        ok = all(checks.values())
        return (200 if ok else 503), {"status": "ready" if ok else "not-ready", "checks": checks}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body = generate_latest(server.registry)
                    self._send(200, body, CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    status, doc = server.healthz() if path == "/healthz" else server.readyz()
                    self._send(status, json.dumps(doc).encode(), "application/json")
                else:
                    self._send(404, b'{"status": "not-found"}', "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # probes every few seconds would flood the logs

        return Handler

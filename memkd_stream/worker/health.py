"""The worker's HTTP endpoints: ``/metrics``, ``/healthz`` and ``/readyz`` (DESIGN.md §6).

- ``/healthz`` (liveness): the process answers and every registered loop has beaten within its
  staleness limit. A consumer loop stuck in a callback or an inference thread wedged on the
  device shows as 503 and Kubernetes restarts the pod.
- ``/readyz`` (readiness): the teachers are loaded and the broker is reachable. Deliberately not
  "partitions assigned": a spare pod with no partition is ready to take one on the next
  rebalance. Per-line state lives in the metrics, not here.

One small threaded ``http.server``; the bodies are JSON so a human with curl sees why.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["HealthServer", "Heartbeats"]


class Heartbeats:
    """Last-beat times of named loops, each with its own staleness limit."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._beats: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def register(self, name: str, stale_after_s: float) -> None:
        with self._lock:
            self._beats[name] = (self._clock(), stale_after_s)

    def beat(self, name: str) -> None:
        with self._lock:
            _, limit = self._beats.get(name, (0.0, 60.0))
            self._beats[name] = (self._clock(), limit)

    def stale(self) -> dict[str, float]:
        """Loops past their limit, with seconds since their last beat."""
        now = self._clock()
        with self._lock:
            return {
                name: round(now - at, 1)
                for name, (at, limit) in self._beats.items()
                if now - at > limit
            }


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
    ) -> None:
        self.registry = registry
        self.heartbeats = heartbeats
        self.ready_checks = ready_checks
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

    def healthz(self) -> tuple[int, dict[str, object]]:
        stale = self.heartbeats.stale()
        if stale:
            return 503, {"status": "stuck", "stale_loops_s": stale}
        return 200, {"status": "ok"}

    def readyz(self) -> tuple[int, dict[str, object]]:
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

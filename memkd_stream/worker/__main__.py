"""``memkd-worker``: the streaming inspection worker process (the container's entry point).

Builds everything from settings (DESIGN.md §6), serves ``/metrics``, ``/healthz`` and ``/readyz``,
loads the teachers and preloads lines, starts the hot swapper and runs the Kafka loop until
SIGTERM/SIGINT (logged the moment it arrives). Exit codes (``ExitCode``, the table in README.md):
0 after a clean drain, 1 ended hard, 2 settings or credentials to fix or a teacher that cannot be
loaded, 3 Kafka broker unreachable for longer than ``kafka.unreachable_timeout_s``, 4 a device
fault (Kubernetes restarts the pod; nothing unacknowledged was committed).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from memkd_stream import package_version, prefer_passive_openmp
from memkd_stream.errors import ExitCode

if TYPE_CHECKING:
    from memkd_stream.log import Logger
    from memkd_stream.worker.app import Worker

__all__ = ["main"]

# After SIGTERM the worker has drain_grace_s; this much more and the process is ended hard.
_HARD_EXIT_MARGIN_S = 5.0
# One start-up step (a teacher, one line's model) taking longer than this is stuck.
_STARTUP_STEP_S = 300.0


class _StopDuringStartUp(Exception):
    """SIGTERM arrived while lines were preloading: stop there, cleanly."""


_EPILOG = """\
HTTP endpoints (on MEMKD_METRICS__HOST:MEMKD_METRICS__PORT, default 0.0.0.0:9400):
  /metrics   Prometheus metrics
  /healthz   liveness: the loops are alive (200) or stuck (503)
  /readyz    readiness: teachers loaded and the broker reachable (200) or not (503)

exit codes:
  0  drained and stopped after SIGTERM/SIGINT
  1  ended hard: a drain did not finish within worker.drain_grace_s + 5 s, a fetched
     record could not be located to skip it, or the consumer loop crashed (a bug)
  2  bad settings, credentials or certificate the broker refuses, or a teacher that cannot
     be loaded (a restart cannot help)
  3  Kafka broker unreachable for longer than kafka.unreachable_timeout_s, or offset
     commits refused for longer than kafka.commit_stall_timeout_s (a stuck group)
  4  device fault: the accelerator fails every batch (nothing of it is committed)

examples:
  MEMKD_KAFKA__BOOTSTRAP_SERVERS=kafka:9092 MEMKD_REDIS__URL=redis://redis:6379/0 memkd-worker
  memkd-worker --config worker.toml --log-level DEBUG
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memkd-worker",
        description=(
            "Consume camera images from Kafka, score them with each line's MemKD model, publish\n"
            "results and dead letters. Settings come from MEMKD_* environment variables\n"
            "(e.g. MEMKD_KAFKA__BOOTSTRAP_SERVERS) and --config FILE (environment wins)."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML settings file (environment wins)"
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="log level (default: the settings' log.level)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    prefer_passive_openmp()  # before torch is imported (by the settings' teachers, the engine)
    args = _parser().parse_args(argv)

    # Signals first: a SIGTERM during start-up (imports, teacher load) is a clean stop too.
    stop_requested = threading.Event()
    worker_ref: list[Worker] = []
    log_ref: list[Logger] = []  # the logger once logging is configured
    grace = {"s": 30.0}

    def end_hard() -> None:
        why = f"the stop did not finish within worker.drain_grace_s + {_HARD_EXIT_MARGIN_S:g} s"
        if log_ref:
            log_ref[0].error("ending hard", reason=why, exit_code=int(ExitCode.FAILED))
        else:
            print(f"memkd-worker: ending hard: {why}", file=sys.stderr, flush=True)
        os._exit(ExitCode.FAILED)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # Say so at once: a drain can take drain_grace_s, and a silent pod looks hung.
        name = signal.Signals(signum).name
        again = stop_requested.is_set()
        if log_ref:
            if again:
                log_ref[0].info("signal received again; already draining", signal=name)
            else:
                log_ref[0].info(
                    "signal received; draining then exiting",
                    signal=name,
                    drain_grace_s=grace["s"],
                )
        else:
            print(f"memkd-worker: {name} received; stopping", file=sys.stderr, flush=True)
        if again:
            return
        stop_requested.set()
        for worker in worker_ref:
            worker.stop()
        # Last resort: a drain that cannot finish must not outlive the pod's grace period.
        timer = threading.Timer(grace["s"] + _HARD_EXIT_MARGIN_S, end_hard)
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    from memkd_stream.log import configure_logging, get_logger
    from memkd_stream.settings import SettingsError, load_settings

    if args.config is not None and not args.config.is_file():
        print(f"memkd-worker: error: --config {args.config}: no such file", file=sys.stderr)
        return ExitCode.USAGE
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"memkd-worker: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    log_settings = settings.log
    if args.log_level:
        log_settings = log_settings.model_copy(update={"level": args.log_level})
    configure_logging(log_settings)
    log = get_logger("memkd_stream.worker")
    grace["s"] = float(settings.worker.drain_grace_s)
    log_ref.append(log)

    from memkd.errors import MemKDError

    from memkd_stream.lines.store import LineStore
    from memkd_stream.worker.app import Worker
    from memkd_stream.worker.engine import Engine
    from memkd_stream.worker.health import HealthServer, Heartbeats
    from memkd_stream.worker.hot_swap import HotSwapper
    from memkd_stream.worker.metrics import WorkerMetrics

    heartbeats = Heartbeats()
    metrics = WorkerMetrics(heartbeats=heartbeats)
    store = LineStore.from_settings(settings.redis)
    try:
        engine = Engine(settings.model, settings.worker, store, metrics=metrics)
    except MemKDError as exc:  # e.g. precision fp16 on a machine without CUDA
        log.error(
            "the model settings cannot run on this machine (MEMKD_MODEL__DEVICE, "
            "MEMKD_MODEL__PRECISION)",
            error=str(exc),
            code=exc.code,
        )
        return ExitCode.USAGE
    worker = Worker(settings, engine, metrics=metrics, heartbeats=heartbeats)
    server = HealthServer(
        settings.metrics.host,
        settings.metrics.port,
        metrics.registry,
        heartbeats,
        worker.ready_checks,
        stopping=lambda: worker.state.fatal,
    ).start()
    log.info("metrics and health serving", host=settings.metrics.host, port=server.port)

    worker_ref.append(worker)
    if stop_requested.is_set():
        worker.stop()

    # Start-up (teachers, preload) beats per step: /healthz says "starting" while it progresses
    # and "stuck" when a step hangs; the Deployment's startupProbe waits for it, not liveness.
    heartbeats.register("startup", _STARTUP_STEP_S)

    def step_done() -> None:
        heartbeats.beat("startup")
        if stop_requested.is_set():
            raise _StopDuringStartUp

    try:
        held = engine.preload(list(settings.worker.preload_lines), beat=step_done)
    except _StopDuringStartUp:
        log.info("stopped during start-up")
        server.stop()
        return ExitCode.OK
    except Exception as exc:  # teacher weights missing or unreadable: nothing can be scored
        log.error("cannot load the teacher; the worker cannot score anything", error=str(exc))
        server.stop()
        return ExitCode.USAGE
    heartbeats.unregister("startup")
    log.info("lines preloaded", lines=held)
    swapper = HotSwapper(
        store,
        engine,
        settings.worker.refresh_interval_s,
        heartbeats=heartbeats,
        stuck_after_s=settings.worker.stuck_after_s,
    )
    swapper.prime()
    swapper.start()
    server.started()
    try:
        code = ExitCode.OK if stop_requested.is_set() else worker.run()
    finally:
        swapper.stop()
        server.stop()
    log.info("worker exited", exit_code=code)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

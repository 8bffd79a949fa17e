"""Start, stop and probe the local Kafka broker and Redis server that development and CI use.

Why a script and not a docker-compose file: the machines this project is built on have Java and
Debian's redis-server but no container runtime, and Kafka comes from Maven Central as plain jars
(deploy/local/pom.xml). Everything runs as ordinary processes under ``var/`` of the checkout:

    var/kafka/server.properties   var/kafka/data/     var/log/kafka.log  var/log/kafka.out
    var/redis/redis.conf          var/redis/data/     var/log/redis.log
    var/run/kafka.pid             var/run/redis.pid   var/run/services.lock

Both servers are brought up by one algorithm (``bring_up``) over a small description of each
(``Service``: its ports, pid file, how to probe it, how to recognise and start it):

1. a pid file whose process is gone (or is not ours: pids are reused) is removed;
2. our own server that lost its pid file (a crash between start and write, var/run wiped) is
   adopted, found by the port it listens on;
3. ours and answering -> nothing to do; ours on other ports than asked -> a clear error, never
   a second server; ours but not answering within the wait (wedged) -> stopped and restarted;
4. a healthy server of the same kind on the port that this checkout did not start (another
   checkout, a developer's own) is reused and never stopped; anything else on a port is an error
   naming the process;
5. start, then wait until a real client round trip answers (Kafka: a metadata request; Redis:
   PING); a start that fails shows the tail of the logs.

``down`` signals only the processes named in our pid files, and only after checking that the pid
still belongs to the program we started.

Usage: services.py up|down|status [--kafka-port N] [--controller-port N] [--redis-port N]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from base64 import urlsafe_b64encode
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
KAFKA_MAIN = "kafka.Kafka"
KAFKA_HEAP = os.environ.get("KAFKA_HEAP_OPTS", "-Xms256m -Xmx512m")


class ServiceError(RuntimeError):
    """A service could not be brought to the state asked for; the message says what to do."""


@dataclass(frozen=True)
class Layout:
    """Where one checkout keeps the files of its local services, and on which ports they run."""

    var: Path
    lib: Path
    kafka_port: int
    controller_port: int
    redis_port: int

    @property
    def run(self) -> Path:
        return self.var / "run"

    @property
    def log(self) -> Path:
        return self.var / "log"


@dataclass(frozen=True)
class Started:
    """A server just launched: its pid once known, and whether it may still come up."""

    pid: Callable[[], int | None]
    starting: Callable[[], bool]


@dataclass(frozen=True)
class Service:
    """One local server: what ``bring_up``, ``down`` and ``status`` need to know about it."""

    name: str
    ports: tuple[int, ...]  # every port it holds; clients connect to the first
    pid_file: Path
    logs: tuple[Path, ...]
    stop_grace_s: float
    adopted_wait_s: float  # how long a running server of ours may take to answer before restart
    port_hint: str  # the make variables that choose other ports
    answers: Callable[[], bool]
    is_ours: Callable[[int], bool]
    running_ports: Callable[[int], set[int]]
    start: Callable[[], Started]

    @property
    def port(self) -> int:
        return self.ports[0]


# --- processes ---------------------------------------------------------------------------------


def _cmdline(pid: int) -> str:
    with contextlib.suppress(psutil.Error):
        return " ".join(psutil.Process(pid).cmdline())
    return ""


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _listener_pids(port: int) -> set[int]:
    """Pids of processes listening on TCP ``port`` (any address)."""
    return {
        conn.pid
        for conn in psutil.net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid
    }


def _who(port: int) -> str:
    holders = sorted(_listener_pids(port))
    return "; ".join(f"pid {h}: {_cmdline(h)[:160]}" for h in holders) or "unknown process"


def _port_busy(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _stop(pid: int, name: str, grace_s: float) -> None:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL."""
    try:
        proc = psutil.Process(pid)
        proc.terminate()
        proc.wait(grace_s)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        print(f"{name}: pid {pid} ignored SIGTERM for {grace_s:.0f}s, sending SIGKILL")
        with contextlib.suppress(psutil.Error):
            proc.kill()
            proc.wait(10)


def _wait_until(
    check: Callable[[], bool], timeout_s: float, still_starting: Callable[[], bool]
) -> bool:
    """Poll ``check`` until true, the timeout passes, or ``still_starting`` says it never will."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        if not still_starting():
            return False
        time.sleep(0.5)
    return check()


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no file)"


def _render(template: Path, out: Path, fields: dict[str, str]) -> None:
    text = template.read_text()
    for key, value in fields.items():
        text = text.replace(f"@{key}@", value)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(out)


# --- the one bring-up algorithm ----------------------------------------------------------------


def _our_pid(svc: Service) -> int | None:
    """Our running server's pid: the pid file's if it is ours, else one adopted by its port."""
    pid = _read_pid(svc.pid_file)
    if pid is not None and not (_alive(pid) and svc.is_ours(pid)):
        print(f"{svc.name}: removing stale pid file (pid {pid} is gone)")
        svc.pid_file.unlink(missing_ok=True)
        pid = None
    if pid is None:
        for port in svc.ports:
            for holder in _listener_pids(port):
                if svc.is_ours(holder):
                    print(f"{svc.name}: adopting our server pid {holder} (pid file was missing)")
                    svc.pid_file.parent.mkdir(parents=True, exist_ok=True)
                    svc.pid_file.write_text(f"{holder}\n")
                    return holder
    return pid


def bring_up(svc: Service, timeout_s: float) -> None:
    """Make ``svc`` answer on its ports (see the module docstring for the steps)."""
    pid = _our_pid(svc)
    if pid is not None:
        running = svc.running_ports(pid)
        if running != set(svc.ports):
            raise ServiceError(
                f"{svc.name} of this checkout is running (pid {pid}: {_cmdline(pid)[:120]}) but "
                f"not on the ports asked for ({sorted(svc.ports)}); stop it first with "
                f"`make services-down`, or ask for the ports it runs on ({sorted(running)})"
            )
        alive_pid = pid
        if _wait_until(svc.answers, min(timeout_s, svc.adopted_wait_s), lambda: _alive(alive_pid)):
            print(f"{svc.name}: already up on 127.0.0.1:{svc.port} (pid {pid})")
            return
        print(f"{svc.name}: our server pid {pid} does not answer on {svc.port}; restarting it")
        _stop(pid, svc.name, grace_s=svc.stop_grace_s)
        svc.pid_file.unlink(missing_ok=True)
    if svc.answers():
        print(
            f"{svc.name}: reusing a server already answering on 127.0.0.1:{svc.port} "
            f"(pid {sorted(_listener_pids(svc.port)) or '?'}, not started by this checkout; "
            "services-down leaves it)"
        )
        return
    for port in svc.ports:
        if _port_busy(port):
            raise ServiceError(
                f"{svc.name}: port {port} is taken by something that is not a healthy "
                f"{svc.name} ({_who(port)}). Stop it, or pick other ports: "
                f"make services-up {svc.port_hint}"
            )
    began = time.monotonic()
    started = svc.start()
    if not _wait_until(svc.answers, timeout_s, started.starting):
        state = "exited" if not started.starting() else f"did not answer within {timeout_s:.0f}s"
        pid = started.pid()
        if pid is not None and _alive(pid):
            _stop(pid, svc.name, grace_s=10)
        svc.pid_file.unlink(missing_ok=True)
        logs = "\n".join(f"--- {log} ---\n{_tail(log)}" for log in svc.logs)
        raise ServiceError(f"{svc.name}: server {state}. Logs:\n{logs}")
    print(
        f"{svc.name}: up on 127.0.0.1:{svc.port} (pid {started.pid()}, "
        f"{time.monotonic() - began:.1f}s)"
    )


def down(services: list[Service]) -> None:
    """Stop what our pid files name, in the order given."""
    for svc in services:
        pid = _read_pid(svc.pid_file)
        if pid is None:
            print(f"{svc.name}: not running (no pid file)")
            continue
        if _alive(pid) and svc.is_ours(pid):
            began = time.monotonic()
            _stop(pid, svc.name, grace_s=svc.stop_grace_s)
            print(f"{svc.name}: stopped pid {pid} ({time.monotonic() - began:.1f}s)")
        else:
            print(f"{svc.name}: pid {pid} already gone; removing its pid file")
        svc.pid_file.unlink(missing_ok=True)


def status(services: list[Service]) -> bool:
    ok = True
    for svc in services:
        pid = _read_pid(svc.pid_file)
        answers = svc.answers()
        ok = ok and answers
        print(
            f"{svc.name}: 127.0.0.1:{svc.port} {'answers' if answers else 'DOWN'}; "
            f"pid file: {pid if pid is not None else 'none'}"
        )
    return ok


# --- kafka -------------------------------------------------------------------------------------


def kafka_answers(port: int, timeout_s: float = 3.0) -> bool:
    """A real metadata round trip with kafka-python, not just an open port."""
    try:
        from kafka import KafkaAdminClient
    except ImportError as exc:  # the Makefile runs this with the project's venv
        raise ServiceError(f"kafka-python is not installed ({exc}); run `make setup`") from exc
    if not _port_busy(port):  # nothing listens: no need to wait for a client's timeout
        return False
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    ms = int(timeout_s * 1000)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=f"127.0.0.1:{port}",
            client_id="memkd-services-probe",
            request_timeout_ms=ms,
            bootstrap_timeout_ms=ms,
            reconnect_backoff_max_ms=500,
        )
    except Exception:
        return False
    try:
        admin.list_topics()
        return True
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            admin.close()


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if not java:
        raise ServiceError(
            "java not found: install a Java 17+ runtime (apt-get install openjdk-17-jre-headless)"
        )
    return java


def _java_cmd(lay: Layout, main: str, *args: str) -> list[str]:
    if not any(lay.lib.glob("kafka_2.13-*.jar")):
        raise ServiceError(f"Kafka jars missing in {lay.lib}; run `make setup`")
    return [
        _java(),
        *KAFKA_HEAP.split(),
        "-XX:+UseG1GC",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dkafka.logs.dir={lay.log}",
        f"-Dlog4j2.configurationFile={HERE / 'log4j2.xml'}",
        "-cp",
        f"{lay.lib}/*",
        main,
        *args,
    ]


def kafka_service(lay: Layout) -> Service:
    props = lay.var / "kafka" / "server.properties"
    data = lay.var / "kafka" / "data"
    out = lay.log / "kafka.out"
    pid_file = lay.run / "kafka.pid"

    def is_ours(pid: int) -> bool:
        cmd = _cmdline(pid)
        return KAFKA_MAIN in cmd and str(props) in cmd

    def running_ports(_pid: int) -> set[int]:
        # the properties file is rendered at each start, so it is the running one
        try:
            listeners = re.search(r"^listeners=(.*)$", props.read_text(), re.MULTILINE)
        except OSError:
            return set()
        return {int(p) for p in re.findall(r":(\d+)", listeners.group(1))} if listeners else set()

    def start() -> Started:
        lay.log.mkdir(parents=True, exist_ok=True)
        data.mkdir(parents=True, exist_ok=True)
        _render(
            HERE / "server.properties",
            props,
            {
                "BROKER_PORT": str(lay.kafka_port),
                "CONTROLLER_PORT": str(lay.controller_port),
                "DATA_DIR": str(data),
            },
        )
        if not (data / "meta.properties").exists():
            cluster_id = urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            cmd = _java_cmd(
                lay,
                "kafka.tools.StorageTool",
                "format",
                "--cluster-id",
                cluster_id,
                "--config",
                str(props),
                "--ignore-formatted",
            )
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
            if done.returncode != 0:
                raise ServiceError(f"kafka storage format failed:\n{done.stdout}{done.stderr}")
            print(f"kafka: formatted {data} (cluster id {cluster_id})")
        with open(out, "ab") as fh:
            proc = subprocess.Popen(
                _java_cmd(lay, KAFKA_MAIN, str(props)),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        pid_file.write_text(f"{proc.pid}\n")
        return Started(pid=lambda: proc.pid, starting=lambda: proc.poll() is None)

    return Service(
        name="kafka",
        ports=(lay.kafka_port, lay.controller_port),
        pid_file=pid_file,
        logs=(out, lay.log / "kafka.log"),
        stop_grace_s=30.0,
        adopted_wait_s=float("inf"),  # a broker replaying its log after a crash takes a while
        port_hint="KAFKA_PORT=... KAFKA_CONTROLLER_PORT=...",
        answers=lambda: kafka_answers(lay.kafka_port),
        is_ours=is_ours,
        running_ports=running_ports,
        start=start,
    )


# --- redis -------------------------------------------------------------------------------------


def redis_answers(port: int, timeout_s: float = 2.0) -> bool:
    """PING with redis-py."""
    import redis

    if not _port_busy(port):
        return False
    client = redis.Redis(
        host="127.0.0.1", port=port, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
    )
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def _redis_server() -> str:
    found = (
        os.environ.get("REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"
    )
    if not Path(found).exists():
        raise ServiceError(
            "redis-server not found: run `make setup` (apt-get install redis-server)"
        )
    return found


def redis_service(lay: Layout) -> Service:
    conf = lay.var / "redis" / "redis.conf"
    data = lay.var / "redis" / "data"
    log = lay.log / "redis.log"
    pid_file = lay.run / "redis.pid"

    def is_ours(pid: int) -> bool:
        """redis-server rewrites its command line to ``host:port``; it runs inside our data dir."""
        try:
            cwd = Path(psutil.Process(pid).cwd())
        except psutil.Error:
            return False
        return "redis-server" in _cmdline(pid) and cwd == data.resolve()

    def running_ports(pid: int) -> set[int]:
        found = re.search(r":(\d+)", _cmdline(pid))
        return {int(found.group(1))} if found else set()

    def start() -> Started:
        for folder in (lay.log, data, lay.run):
            folder.mkdir(parents=True, exist_ok=True)
        _render(
            HERE / "redis.conf",
            conf,
            {
                "PORT": str(lay.redis_port),
                "PID_FILE": str(pid_file),
                "LOG_FILE": str(log),
                "DATA_DIR": str(data),
            },
        )
        # redis-server daemonizes and writes its pid file itself
        done = subprocess.run(
            [_redis_server(), str(conf)], capture_output=True, text=True, timeout=30, check=False
        )
        if done.returncode != 0:
            raise ServiceError(
                f"redis: redis-server failed to start:\n{done.stdout}{done.stderr}\n"
                f"--- {log} ---\n{_tail(log)}"
            )

        def starting() -> bool:
            pid = _read_pid(pid_file)
            return pid is None or _alive(pid)

        return Started(pid=lambda: _read_pid(pid_file), starting=starting)

    return Service(
        name="redis",
        ports=(lay.redis_port,),
        pid_file=pid_file,
        logs=(log,),
        stop_grace_s=15.0,
        adopted_wait_s=15.0,
        port_hint="REDIS_PORT=...",
        answers=lambda: redis_answers(lay.redis_port),
        is_ours=is_ours,
        running_ports=running_ports,
        start=start,
    )


# --- commands ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(lay: Layout) -> Iterator[None]:
    """Two `make services-up` at once (two terminals, two helpers) must not race."""
    lay.run.mkdir(parents=True, exist_ok=True)
    with open(lay.run / "services.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--var", type=Path, default=ROOT / "var")
    parser.add_argument("--lib", type=Path, default=HERE / "lib")
    parser.add_argument("--kafka-port", type=int, default=39092)
    parser.add_argument("--controller-port", type=int, default=39093)
    parser.add_argument("--redis-port", type=int, default=36379)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait per service")
    args = parser.parse_args(argv)
    lay = Layout(
        var=args.var.resolve(),
        lib=args.lib.resolve(),
        kafka_port=args.kafka_port,
        controller_port=args.controller_port,
        redis_port=args.redis_port,
    )
    kafka, redis_ = kafka_service(lay), redis_service(lay)
    try:
        with _locked(lay):
            if args.command == "down":
                down([kafka, redis_])  # Kafka first: it has the longer shutdown
                return 0
            if args.command == "up":
                for svc in (redis_, kafka):
                    bring_up(svc, args.timeout)
                ok = True
            else:
                ok = status([kafka, redis_])
            print(f"logs: {lay.log}")
            return 0 if ok else 1
    except ServiceError as exc:
        print(f"services {args.command} failed: {exc}", file=sys.stderr)
        print(f"logs: {lay.log}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Start, stop and probe the local Kafka broker and Redis server that development and CI use.

Why a script and not a docker-compose file: the machines this project is built on have Java and
Debian's redis-server but no container runtime, and Kafka comes from Maven Central as plain jars
(deploy/local/pom.xml). Everything runs as ordinary processes under ``var/`` of the checkout:

    var/kafka/server.properties   var/kafka/data/     var/log/kafka.log  var/log/kafka.out
    var/redis/redis.conf          var/redis/data/     var/log/redis.log
    var/run/kafka.pid             var/run/redis.pid   var/run/services.lock

Invariants:
- ``down`` signals only the processes named in our pid files, and only after checking that the
  pid still belongs to the program we started (pids are reused).
- ``up`` is idempotent: services that already answer are left alone. A pid file whose process is
  gone is removed; a process of ours that holds the port but does not answer within the timeout
  (a wedged broker left by a crashed run) is killed and restarted.
- A healthy Kafka/Redis on our port that this checkout did not start (another checkout, a
  developer's own) is reused, never stopped. Something else on the port is a clear error.

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
import signal
import subprocess
import sys
import time
import uuid
from base64 import urlsafe_b64encode
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
KAFKA_MAIN = "kafka.Kafka"
KAFKA_HEAP = os.environ.get("KAFKA_HEAP_OPTS", "-Xms256m -Xmx512m")


class ServiceError(RuntimeError):
    """A service could not be brought to the state asked for; the message says what to do."""


@dataclass(frozen=True)
class Layout:
    """Where one checkout keeps the files of its local services."""

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

    @property
    def kafka_props(self) -> Path:
        return self.var / "kafka" / "server.properties"

    @property
    def kafka_data(self) -> Path:
        return self.var / "kafka" / "data"

    @property
    def kafka_pid(self) -> Path:
        return self.run / "kafka.pid"

    @property
    def redis_conf(self) -> Path:
        return self.var / "redis" / "redis.conf"

    @property
    def redis_data(self) -> Path:
        return self.var / "redis" / "data"

    @property
    def redis_pid(self) -> Path:
        return self.run / "redis.pid"


# --- processes ---------------------------------------------------------------------------------


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _listener_pids(port: int) -> set[int]:
    """Pids of processes listening on TCP ``port`` (any address), from /proc."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            next(fh, None)
            for line in fh:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{inode}]")
    if not inodes:
        return set()
    pids: set[int] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        pids.add(int(proc.name))
                        break
    return pids


def _port_busy(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _stop(pid: int, name: str, grace_s: float) -> None:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        print(f"{name}: pid {pid} ignored SIGTERM for {grace_s:.0f}s, sending SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)


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


# --- probes ------------------------------------------------------------------------------------


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


# --- kafka -------------------------------------------------------------------------------------


def _render(template: Path, out: Path, fields: dict[str, str]) -> None:
    text = template.read_text()
    for key, value in fields.items():
        text = text.replace(f"@{key}@", value)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(out)


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


def _is_our_kafka(pid: int, lay: Layout) -> bool:
    cmd = _cmdline(pid)
    return KAFKA_MAIN in cmd and str(lay.kafka_props) in cmd


def _format_storage(lay: Layout) -> None:
    if (lay.kafka_data / "meta.properties").exists():
        return
    cluster_id = urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    cmd = _java_cmd(
        lay,
        "kafka.tools.StorageTool",
        "format",
        "--cluster-id",
        cluster_id,
        "--config",
        str(lay.kafka_props),
        "--ignore-formatted",
    )
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise ServiceError(f"kafka storage format failed:\n{done.stdout}{done.stderr}")
    print(f"kafka: formatted {lay.kafka_data} (cluster id {cluster_id})")


def kafka_up(lay: Layout, timeout_s: float) -> None:
    port, cport = lay.kafka_port, lay.controller_port
    pid = _read_pid(lay.kafka_pid)
    if pid is not None and not (_alive(pid) and _is_our_kafka(pid, lay)):
        print(f"kafka: removing stale pid file (pid {pid} is gone)")
        lay.kafka_pid.unlink(missing_ok=True)
        pid = None
    if pid is None:
        # Our own broker whose pid file was lost (crash between start and write, var/run wiped).
        for holder in _listener_pids(port) | _listener_pids(cport):
            if _is_our_kafka(holder, lay):
                print(f"kafka: adopting our broker pid {holder} (pid file was missing)")
                lay.kafka_pid.write_text(f"{holder}\n")
                pid = holder
                break
    if pid is not None:
        _check_same_ports("kafka", pid, lay, {port, cport})
        if _wait_until(lambda: kafka_answers(port), timeout_s, lambda: _alive(pid)):
            print(f"kafka: already up on 127.0.0.1:{port} (pid {pid})")
            return
        print(f"kafka: our broker pid {pid} does not answer on {port}; restarting it")
        _stop(pid, "kafka", grace_s=15)
        lay.kafka_pid.unlink(missing_ok=True)

    if kafka_answers(port):
        holders = sorted(_listener_pids(port))
        print(
            f"kafka: reusing a broker already answering on 127.0.0.1:{port} "
            f"(pid {holders or '?'}, not started by this checkout; services-down leaves it)"
        )
        return
    for p in (port, cport):
        if _port_busy(p):
            holders = sorted(_listener_pids(p))
            who = "; ".join(f"pid {h}: {_cmdline(h)[:160]}" for h in holders) or "unknown process"
            raise ServiceError(
                f"kafka: port {p} is taken by something that is not a healthy Kafka "
                f"({who}). Stop it, or pick other ports: "
                "make services-up KAFKA_PORT=... KAFKA_CONTROLLER_PORT=..."
            )

    lay.log.mkdir(parents=True, exist_ok=True)
    lay.kafka_data.mkdir(parents=True, exist_ok=True)
    _render(
        HERE / "server.properties",
        lay.kafka_props,
        {
            "BROKER_PORT": str(port),
            "CONTROLLER_PORT": str(cport),
            "DATA_DIR": str(lay.kafka_data),
        },
    )
    _format_storage(lay)
    out = lay.log / "kafka.out"
    with open(out, "ab") as fh:
        proc = subprocess.Popen(
            _java_cmd(lay, KAFKA_MAIN, str(lay.kafka_props)),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    lay.kafka_pid.write_text(f"{proc.pid}\n")
    started = time.monotonic()
    if not _wait_until(lambda: kafka_answers(port), timeout_s, lambda: proc.poll() is None):
        state = "exited" if proc.poll() is not None else f"did not answer within {timeout_s:.0f}s"
        _stop(proc.pid, "kafka", grace_s=10)
        lay.kafka_pid.unlink(missing_ok=True)
        raise ServiceError(
            f"kafka: broker {state}. Logs: {lay.log / 'kafka.log'} and {out}\n"
            f"--- {out} ---\n{_tail(out)}\n"
            f"--- {lay.log / 'kafka.log'} ---\n{_tail(lay.log / 'kafka.log')}"
        )
    print(f"kafka: up on 127.0.0.1:{port} (pid {proc.pid}, {time.monotonic() - started:.1f}s)")


# --- redis -------------------------------------------------------------------------------------


def _redis_server() -> str:
    found = (
        os.environ.get("REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"
    )
    if not Path(found).exists():
        raise ServiceError(
            "redis-server not found: run `make setup` (apt-get install redis-server)"
        )
    return found


def _is_our_redis(pid: int, lay: Layout) -> bool:
    """redis-server rewrites its command line to ``host:port``; it runs inside our data dir."""
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return False
    return "redis-server" in _cmdline(pid) and cwd == lay.redis_data.resolve()


def _running_ports(name: str, pid: int, lay: Layout) -> set[int]:
    """The ports our running ``name`` process was started with."""
    if name == "kafka":  # the properties file is rendered at each start, so it is the running one
        try:
            props = lay.kafka_props.read_text()
        except OSError:
            return set()
        listeners = re.search(r"^listeners=(.*)$", props, re.MULTILINE)
        return (
            {int(port) for port in re.findall(r":(\d+)", listeners.group(1))}
            if listeners
            else set()
        )
    found = re.search(r":(\d+)", _cmdline(pid))
    return {int(found.group(1))} if found else set()


def _check_same_ports(name: str, pid: int, lay: Layout, ports: set[int]) -> None:
    """Our process runs, but maybe on other ports than asked: never silently run two."""
    if _running_ports(name, pid, lay) == ports:
        return
    cmd = _cmdline(pid)
    raise ServiceError(
        f"{name} of this checkout is running (pid {pid}: {cmd[:120]}) but not on the ports asked "
        f"for ({sorted(ports)}); stop it first with `make services-down`, or ask for the ports "
        f"it runs on ({sorted(_running_ports(name, pid, lay))})"
    )


def redis_up(lay: Layout, timeout_s: float) -> None:
    port = lay.redis_port
    pid = _read_pid(lay.redis_pid)
    if pid is not None and not (_alive(pid) and _is_our_redis(pid, lay)):
        print(f"redis: removing stale pid file (pid {pid} is gone)")
        lay.redis_pid.unlink(missing_ok=True)
        pid = None
    if pid is None:
        for holder in _listener_pids(port):
            if _is_our_redis(holder, lay):
                print(f"redis: adopting our server pid {holder} (pid file was missing)")
                lay.redis_pid.parent.mkdir(parents=True, exist_ok=True)
                lay.redis_pid.write_text(f"{holder}\n")
                pid = holder
                break
    if pid is not None:
        _check_same_ports("redis", pid, lay, {port})
        if _wait_until(lambda: redis_answers(port), min(timeout_s, 15), lambda: _alive(pid)):
            print(f"redis: already up on 127.0.0.1:{port} (pid {pid})")
            return
        print(f"redis: our server pid {pid} does not answer on {port}; restarting it")
        _stop(pid, "redis", grace_s=10)
        lay.redis_pid.unlink(missing_ok=True)
    if redis_answers(port):
        holders = sorted(_listener_pids(port))
        print(
            f"redis: reusing a server already answering on 127.0.0.1:{port} "
            f"(pid {holders or '?'}, not started by this checkout; services-down leaves it)"
        )
        return
    if _port_busy(port):
        holders = sorted(_listener_pids(port))
        who = "; ".join(f"pid {h}: {_cmdline(h)[:160]}" for h in holders) or "unknown process"
        raise ServiceError(
            f"redis: port {port} is taken by something that is not a healthy Redis "
            f"({who}). Stop it, or pick another port: make services-up REDIS_PORT=..."
        )

    log = lay.log / "redis.log"
    for folder in (lay.log, lay.redis_data, lay.run):
        folder.mkdir(parents=True, exist_ok=True)
    _render(
        HERE / "redis.conf",
        lay.redis_conf,
        {
            "PORT": str(port),
            "PID_FILE": str(lay.redis_pid),
            "LOG_FILE": str(log),
            "DATA_DIR": str(lay.redis_data),
        },
    )
    started = time.monotonic()
    done = subprocess.run(
        [_redis_server(), str(lay.redis_conf)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        raise ServiceError(
            f"redis: redis-server failed to start:\n{done.stdout}{done.stderr}\n"
            f"--- {log} ---\n{_tail(log)}"
        )

    def starting() -> bool:
        p = _read_pid(lay.redis_pid)
        return p is None or _alive(p)

    if not _wait_until(lambda: redis_answers(port), timeout_s, starting):
        p = _read_pid(lay.redis_pid)
        if p is not None and _alive(p):
            _stop(p, "redis", grace_s=5)
        lay.redis_pid.unlink(missing_ok=True)
        raise ServiceError(f"redis: did not answer PING on {port}. Log: {log}\n{_tail(log)}")
    print(
        f"redis: up on 127.0.0.1:{port} (pid {_read_pid(lay.redis_pid)}, "
        f"{time.monotonic() - started:.1f}s)"
    )


# --- commands ----------------------------------------------------------------------------------


def down(lay: Layout) -> None:
    """Stop what our pid files name (Kafka first: it has the longer shutdown)."""
    for name, pid_file, ours, grace in (
        ("kafka", lay.kafka_pid, _is_our_kafka, 30.0),
        ("redis", lay.redis_pid, _is_our_redis, 15.0),
    ):
        pid = _read_pid(pid_file)
        if pid is None:
            print(f"{name}: not running (no pid file)")
            continue
        if _alive(pid) and ours(pid, lay):
            started = time.monotonic()
            _stop(pid, name, grace_s=grace)
            print(f"{name}: stopped pid {pid} ({time.monotonic() - started:.1f}s)")
        else:
            print(f"{name}: pid {pid} already gone; removing its pid file")
        pid_file.unlink(missing_ok=True)


def status(lay: Layout) -> bool:
    ok = True
    for name, pid_file, port, probe in (
        ("kafka", lay.kafka_pid, lay.kafka_port, kafka_answers),
        ("redis", lay.redis_pid, lay.redis_port, redis_answers),
    ):
        pid = _read_pid(pid_file)
        answers = probe(port)
        ok = ok and answers
        print(
            f"{name}: 127.0.0.1:{port} {'answers' if answers else 'DOWN'}; "
            f"pid file: {pid if pid is not None else 'none'}"
        )
    print(f"logs: {lay.log}")
    return ok


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
    try:
        with _locked(lay):
            if args.command == "up":
                redis_up(lay, args.timeout)
                kafka_up(lay, args.timeout)
                print(f"logs: {lay.log}")
            elif args.command == "down":
                down(lay)
            else:
                return 0 if status(lay) else 1
    except ServiceError as exc:
        print(f"services {args.command} failed: {exc}", file=sys.stderr)
        print(f"logs: {lay.log}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

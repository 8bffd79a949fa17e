"""Start, stop and probe the local Kafka broker and Redis server that development and CI use.

Why a script and not a docker-compose file: the machines this project is built on have Java and
Debian's redis-server but no container runtime, and Kafka comes from Maven Central as plain jars
(deploy/local/pom.xml). Everything runs as ordinary processes under ``var/`` of the checkout:

    var/kafka/server.properties   var/kafka/data/     var/log/kafka.log  var/log/kafka.out
    var/kafka/tls/ca.pem          var/kafka/tls/broker.pem (the broker's key and certificates)
    var/redis/redis.conf          var/redis/data/     var/log/redis.log
    var/run/kafka.pid             var/run/redis.pid   var/run/services.lock

The broker has two client listeners: PLAINTEXT (tests, the demo, the broker's own traffic) and
SASL_SSL, SCRAM-SHA-512 over TLS, so that authentication is exercised for real. Its TLS material
(a CA made for this checkout and a certificate for 127.0.0.1/localhost signed by it) is generated
with openssl when missing or about to expire, never committed; its one user, ``SASL_USER`` with
the password ``SASL_PASSWORD``, is a development constant: it guards nothing but a broker that
listens on the loopback interface. The user is written into the metadata when the data dir is
formatted, and added over PLAINTEXT to a data dir formatted before the SASL listener existed.

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
5. start, then wait until a real client round trip answers on every client port (Kafka: a
   metadata request on each listener, authenticated on SASL_SSL; Redis: PING), giving a server of
   ours what only a running server can be given meanwhile (Kafka: a missing SCRAM user); a start
   that fails shows the tail of the logs.

``down`` signals only the processes named in our pid files, and only after checking that the pid
still belongs to the program we started.

Usage: services.py up|down|status [--kafka-port N] [--controller-port N] [--sasl-port N]
                                  [--redis-port N]
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
import tempfile
import time
import uuid
from base64 import urlsafe_b64encode
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
KAFKA_MAIN = "kafka.Kafka"
KAFKA_HEAP = os.environ.get("KAFKA_HEAP_OPTS", "-Xms256m -Xmx512m")

# The SASL_SSL listener's one user. A development constant, not a secret: it guards nothing but
# a broker on the loopback interface of a developer's machine or a CI runner. Tests read it from
# here (tests/integration/conftest.py).
SASL_MECHANISM = "SCRAM-SHA-512"
SASL_USER = "memkd"
SASL_PASSWORD = "memkd-local-development-only"
# Generated certificates live this long; they are made anew when less than a month is left.
TLS_DAYS = 3650
TLS_RENEW_S = 30 * 24 * 3600


class ServiceError(RuntimeError):
    """A service could not be brought to the state asked for; the message says what to do."""


@dataclass(frozen=True)
class Layout:
    """Where one checkout keeps the files of its local services, and on which ports they run."""

    var: Path
    lib: Path
    kafka_port: int
    controller_port: int
    sasl_port: int
    redis_port: int

    @property
    def run(self) -> Path:
        return self.var / "run"

    @property
    def tls(self) -> Path:
        return self.var / "kafka" / "tls"

    @property
    def log(self) -> Path:
        return self.var / "log"


@dataclass(frozen=True)
class Started:
    """A server just launched: its pid once known, and whether it may still come up."""

    pid: Callable[[], int | None]
    starting: Callable[[], bool]


@dataclass(frozen=True)
class Listener:
    """A port that clients use, and a real client round trip on it."""

    port: int
    answers: Callable[[], bool]
    about: str = ""  # how clients talk to it, when not plainly (protocol, user, CA)

    def __str__(self) -> str:
        return f"127.0.0.1:{self.port}" + (f" ({self.about})" if self.about else "")


def _nothing_to_provision() -> bool:
    return False


@dataclass(frozen=True)
class Service:
    """One local server: what ``bring_up``, ``down`` and ``status`` need to know about it."""

    name: str
    ports: tuple[int, ...]  # every port it holds; clients connect to the first
    listeners: tuple[Listener, ...]  # the ports clients use; the server answers when all answer
    pid_file: Path
    logs: tuple[Path, ...]
    stop_grace_s: float
    adopted_wait_s: float  # how long a running server of ours may take to answer before restart
    port_hint: str  # the make variables that choose other ports
    is_ours: Callable[[int], bool]
    running_ports: Callable[[int], set[int]]
    start: Callable[[], Started]
    # Gives a running server of ours what only a running server can be given and a listener
    # needs (Kafka: the SCRAM user on a data dir formatted before the SASL listener existed);
    # True when it changed something. Idempotent: it runs while ``bring_up`` waits.
    provision: Callable[[], bool] = field(default=_nothing_to_provision)

    @property
    def port(self) -> int:
        return self.ports[0]

    def answers(self) -> bool:
        """Every listener answers a real client round trip (the first failure stops the asking)."""
        return all(listener.answers() for listener in self.listeners)

    def ready(self) -> bool:
        """``answers``, after provisioning what a server of ours lacks."""
        return self.answers() or (self.provision() and self.answers())

    def where(self) -> str:
        return ", ".join(str(listener) for listener in self.listeners)


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


def _shown(path: Path) -> str:
    """``path`` relative to the checkout when inside it (shorter in messages), else absolute."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


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
        running, asked = svc.running_ports(pid), set(svc.ports)
        if running != asked:
            hint = (
                f"it has no port {sorted(asked - running)} (started by an older services.py?): "
                "restart it with `make services-down` and `make services-up`"
                if running < asked
                else "stop it first with `make services-down`, or ask for the ports it runs on "
                f"({sorted(running)})"
            )
            raise ServiceError(
                f"{svc.name} of this checkout is running (pid {pid}: {_cmdline(pid)[:120]}) but "
                f"not on the ports asked for ({sorted(asked)}); {hint}"
            )
        alive_pid = pid
        if _wait_until(svc.ready, min(timeout_s, svc.adopted_wait_s), lambda: _alive(alive_pid)):
            print(f"{svc.name}: already up on {svc.where()} (pid {pid})")
            return
        print(f"{svc.name}: our server pid {pid} does not answer on {svc.port}; restarting it")
        _stop(pid, svc.name, grace_s=svc.stop_grace_s)
        svc.pid_file.unlink(missing_ok=True)
    if svc.answers():
        print(
            f"{svc.name}: reusing a server already answering on {svc.where()} "
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
    if not _wait_until(svc.ready, timeout_s, started.starting):
        state = "exited" if not started.starting() else f"did not answer within {timeout_s:.0f}s"
        pid = started.pid()
        if pid is not None and _alive(pid):
            _stop(pid, svc.name, grace_s=10)
        svc.pid_file.unlink(missing_ok=True)
        logs = "\n".join(f"--- {log} ---\n{_tail(log)}" for log in svc.logs)
        raise ServiceError(f"{svc.name}: server {state}. Logs:\n{logs}")
    print(f"{svc.name}: up on {svc.where()} (pid {started.pid()}, {time.monotonic() - began:.1f}s)")


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
    """One line per listener: does a real client round trip answer?"""
    ok = True
    for svc in services:
        pid = _read_pid(svc.pid_file)
        for listener in svc.listeners:
            answers = listener.answers()
            ok = ok and answers
            print(
                f"{svc.name}: {listener} {'answers' if answers else 'DOWN'}; "
                f"pid file: {pid if pid is not None else 'none'}"
            )
    return ok


# --- kafka -------------------------------------------------------------------------------------


def _kafka_admin(port: int, timeout_s: float, security: dict[str, Any]) -> Any:
    """A kafka-python admin client that gives up after ``timeout_s`` (raises when it cannot
    bootstrap)."""
    try:
        from kafka import KafkaAdminClient
    except ImportError as exc:  # the Makefile runs this with the project's venv
        raise ServiceError(f"kafka-python is not installed ({exc}); run `make setup`") from exc
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    ms = int(timeout_s * 1000)
    return KafkaAdminClient(
        bootstrap_servers=f"127.0.0.1:{port}",
        client_id="memkd-services-probe",
        request_timeout_ms=ms,
        bootstrap_timeout_ms=ms,
        reconnect_backoff_max_ms=500,
        **security,
    )


def kafka_answers(port: int, timeout_s: float = 3.0, **security: Any) -> bool:
    """A real metadata round trip with kafka-python, not just an open port; ``security`` are
    kafka-python's keyword arguments (security_protocol, sasl_*, ssl_*)."""
    if not _port_busy(port):  # nothing listens: no need to wait for a client's timeout
        return False
    try:
        admin = _kafka_admin(port, timeout_s, security)
    except ServiceError:
        raise
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


def sasl_client_kwargs(ca: Path) -> dict[str, str]:
    """kafka-python's keyword arguments for the SASL_SSL listener as the development user."""
    return {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": SASL_MECHANISM,
        "sasl_plain_username": SASL_USER,
        "sasl_plain_password": SASL_PASSWORD,
        "ssl_cafile": str(ca),
    }


def _add_scram_user(plaintext_port: int) -> bool:
    """Create the development user over PLAINTEXT unless it has a SCRAM-SHA-512 credential; True
    when it was created. A data dir formatted with ``--add-scram`` has it already."""
    from kafka.admin import UserScramCredentialUpsertion

    if not _port_busy(plaintext_port):
        return False
    try:
        admin = _kafka_admin(plaintext_port, 5.0, {})
    except ServiceError:
        raise
    except Exception:
        return False
    try:
        found = admin.describe_user_scram_credentials([SASL_USER]).get(SASL_USER) or {}
        mechanisms = {info["mechanism"].name for info in found.get("credential_infos", [])}
        if SASL_MECHANISM.replace("-", "_") in mechanisms:
            return False
        upsert = UserScramCredentialUpsertion(SASL_USER, SASL_MECHANISM, SASL_PASSWORD)
        error = admin.alter_user_scram_credentials([upsert]).get(SASL_USER)
    except Exception as exc:
        print(f"kafka: could not check or create the SCRAM user {SASL_USER}: {exc}")
        return False
    finally:
        with contextlib.suppress(Exception):
            admin.close()
    if error:
        raise ServiceError(f"kafka: creating the SCRAM user {SASL_USER} failed: {error}")
    print(f"kafka: created the SCRAM user {SASL_USER} (the data dir did not have it)")
    return True


# --- kafka: TLS material -----------------------------------------------------------------------


def _openssl(*args: str, cwd: Path | None = None, check: bool = True) -> bool:
    """Run openssl; whether it succeeded (a failure raises when ``check``)."""
    openssl = shutil.which("openssl")
    if not openssl:
        raise ServiceError("openssl not found: install it (apt-get install openssl)")
    done = subprocess.run(
        [openssl, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if check and done.returncode != 0:
        raise ServiceError(f"openssl {args[0]} failed:\n{done.stdout}{done.stderr}")
    return done.returncode == 0


def _tls_usable(ca: Path, keystore: Path) -> bool:
    """Both files there, made together (the keystore ends with this CA), and not about to expire."""
    try:
        together = keystore.read_text().endswith(ca.read_text())
    except OSError:
        return False
    expiry = ("x509", "-noout", "-checkend", str(TLS_RENEW_S), "-in", str(keystore))
    return together and _openssl(*expiry, check=False)


def ensure_tls(tls: Path) -> bool:
    """A CA of this checkout (``ca.pem``, what clients trust) and the broker's PEM keystore
    (``broker.pem``: its unencrypted key, its certificate for 127.0.0.1 and localhost, the CA),
    made when either is missing, they were not made together, or the certificate expires within
    a month; True when made.

    Both are made anew together, and the CA's key is thrown away once it has signed: nothing can
    be signed by this CA afterwards.
    """
    ca, keystore = tls / "ca.pem", tls / "broker.pem"
    if _tls_usable(ca, keystore):
        return False
    tls.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tls-", dir=tls.parent) as tmp_name:
        tmp = Path(tmp_name)  # mode 0700: the keys never sit where others can read them
        days = str(TLS_DAYS)
        # P-256 keys: made in milliseconds (RSA 2048 takes seconds on a busy machine).
        new_key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
        _openssl(
            "req", "-x509", *new_key, "-days", days, "-keyout", "ca.key", "-out", "ca.pem",
            "-subj", "/CN=memkd-stream local development CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=tmp,
        )  # fmt: skip
        _openssl(
            "req", *new_key, "-keyout", "broker.key", "-out", "broker.csr",
            "-subj", "/CN=localhost",
            cwd=tmp,
        )  # fmt: skip
        (tmp / "broker.ext").write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\n"
        )
        _openssl(
            "x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-set_serial", f"0x{uuid.uuid4().hex}", "-days", days, "-extfile", "broker.ext",
            "-out", "broker.crt",
            cwd=tmp,
        )  # fmt: skip
        # Kafka's PEM keystore (ssl.keystore.type=PEM): the key, then the certificate chain.
        parts = [(tmp / name).read_text() for name in ("broker.key", "broker.crt", "ca.pem")]
        (tmp / "broker.pem").write_text("".join(parts))
        (tmp / "broker.pem").chmod(0o600)
        (tmp / "broker.pem").replace(keystore)
        (tmp / "ca.pem").replace(ca)
    print(f"kafka: generated a CA and the broker's certificate in {_shown(tls)}")
    return True


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


def _cluster_id() -> str:
    """A random KRaft cluster id. One in 64 base64url ids starts with "-", which kafka-storage's
    argument parser reads as an option (Kafka's own Uuid.randomUuid() redraws those too)."""
    while True:
        cluster_id = urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


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
        ensure_tls(lay.tls)
        _render(
            HERE / "server.properties",
            props,
            {
                "BROKER_PORT": str(lay.kafka_port),
                "CONTROLLER_PORT": str(lay.controller_port),
                "SASL_PORT": str(lay.sasl_port),
                "KEYSTORE": str(lay.tls / "broker.pem"),
                "DATA_DIR": str(data),
            },
        )
        if not (data / "meta.properties").exists():
            cluster_id = _cluster_id()
            cmd = _java_cmd(
                lay,
                "kafka.tools.StorageTool",
                "format",
                "--cluster-id",
                cluster_id,
                "--config",
                str(props),
                "--ignore-formatted",
                "--add-scram",
                f"{SASL_MECHANISM}=[name={SASL_USER},password={SASL_PASSWORD}]",
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

    ca = lay.tls / "ca.pem"

    def sasl_answers() -> bool:
        return ca.is_file() and kafka_answers(lay.sasl_port, **sasl_client_kwargs(ca))

    return Service(
        name="kafka",
        ports=(lay.kafka_port, lay.controller_port, lay.sasl_port),
        listeners=(
            Listener(lay.kafka_port, lambda: kafka_answers(lay.kafka_port)),
            Listener(
                lay.sasl_port,
                sasl_answers,
                f"SASL_SSL, {SASL_MECHANISM} user {SASL_USER}, CA {_shown(ca)}",
            ),
        ),
        pid_file=pid_file,
        logs=(out, lay.log / "kafka.log"),
        stop_grace_s=30.0,
        adopted_wait_s=float("inf"),  # a broker replaying its log after a crash takes a while
        port_hint="KAFKA_PORT=... KAFKA_CONTROLLER_PORT=... KAFKA_SASL_PORT=...",
        is_ours=is_ours,
        running_ports=running_ports,
        start=start,
        provision=lambda: _add_scram_user(lay.kafka_port),
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
        listeners=(Listener(lay.redis_port, lambda: redis_answers(lay.redis_port)),),
        port_hint="REDIS_PORT=...",
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
    parser.add_argument("--sasl-port", type=int, default=39094, help="Kafka's SASL_SSL listener")
    parser.add_argument("--redis-port", type=int, default=36379)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait per service")
    args = parser.parse_args(argv)
    lay = Layout(
        var=args.var.resolve(),
        lib=args.lib.resolve(),
        kafka_port=args.kafka_port,
        controller_port=args.controller_port,
        sasl_port=args.sasl_port,
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

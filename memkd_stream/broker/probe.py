"""Is anything listening at the bootstrap address? A TCP connect, nothing more.

kafka-python reports a broker that is down, a wrong password and a TLS failure alike (a
bootstrap timeout), so this tells the first from the others; the worker's broker probe uses it
too when it has no partition to ask about (a missing topic is not a dead broker).
"""

from __future__ import annotations

import socket

__all__ = ["tcp_connect", "tcp_reachable"]


def tcp_connect(bootstrap: str, timeout_s: float) -> None:
    """Open (and close) a TCP connection to the first bootstrap server that accepts one.

    Raises:
        OSError: none accepted (the last error).
    """
    error: OSError | None = None
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout_s):
                return
        except (OSError, ValueError) as exc:
            error = exc if isinstance(exc, OSError) else OSError(str(exc))
    raise error or OSError("no bootstrap servers configured")


def tcp_reachable(bootstrap: str, timeout_s: float) -> bool:
    """Whether a bootstrap server accepts a TCP connection within ``timeout_s``."""
    try:
        tcp_connect(bootstrap, timeout_s)
    except OSError:
        return False
    return True

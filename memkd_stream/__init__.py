"""memkd-stream: streaming visual inspection with MemKD (the service; the model is ``memkd``).

The layout follows DESIGN.md §2: ``contract`` (the wire format), ``lines`` (line models in
Redis), ``broker`` (Kafka clients and topics), ``worker`` (``memkd-worker``), ``cli``
(``memkd-stream``), plus ``settings``, ``log`` and ``errors`` shared by all of them.
"""

from __future__ import annotations

__all__ = ["package_version"]


def package_version() -> str:
    """The installed distribution's version (what a bug report should quote)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("memkd-stream")
    except PackageNotFoundError:  # running from a bare checkout
        return "unknown"

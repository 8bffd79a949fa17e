"""The ``memkd-stream`` command: what operators run to train, evaluate and manage lines.

The entry point is :func:`main` (``memkd_stream.cli:main``); each sub-command lives in its own
module and registers itself on the parser (see :mod:`memkd_stream.cli.main`).
"""

from __future__ import annotations

from memkd_stream.cli.main import main

__all__ = ["main"]

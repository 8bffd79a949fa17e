"""Line ids: the one name a production line has everywhere (Kafka key, Redis keys, CLI).

The id is the Kafka record key of every image of that line (DESIGN.md §3), so all of a line's
records share a partition, and it is embedded in Redis key names (§5). Hence a conservative
alphabet: no spaces, no ``:`` (the Redis key separator), no leading punctuation, at most 64 chars.
"""

from __future__ import annotations

import re

from memkd_stream.contract.errors import BadLineId

__all__ = ["LINE_ID_RE", "validate_line_id"]

LINE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def validate_line_id(line: str) -> str:
    """Return ``line`` unchanged when it is a valid line id, else raise :class:`BadLineId`."""
    if isinstance(line, str) and LINE_ID_RE.fullmatch(line):
        return line
    shown = line if isinstance(line, str) else type(line).__name__
    raise BadLineId(
        f"line id {shown!r} is not valid: use 1-64 characters A-Z a-z 0-9 . _ -, "
        "starting with a letter or digit (e.g. 'A', 'press-3')",
    )

"""``dlq replay --since``: an ISO time or a duration back from now, as ms since the epoch."""

from __future__ import annotations

import pytest

from memkd_stream.cli.dlq import parse_since

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("15m", (NOW - 900) * 1000),
        ("2h", (NOW - 7200) * 1000),
        ("1h30m", (NOW - 5400) * 1000),
        ("1d", (NOW - 86400) * 1000),
        ("500ms", NOW * 1000 - 500),
        ("2023-11-14T22:13:20Z", NOW * 1000),
        ("2023-11-14T22:13:20", NOW * 1000),  # no zone: UTC
        ("2023-11-14T23:13:20+01:00", NOW * 1000),
    ],
)
def test_since_accepts_iso_times_and_durations(text: str, ms: float) -> None:
    assert parse_since(text, NOW) == int(ms)


@pytest.mark.parametrize("text", ["yesterday", "15 m", "15", "2h-", ""])
def test_anything_else_says_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match=r"ISO time .* duration"):
        parse_since(text, NOW)

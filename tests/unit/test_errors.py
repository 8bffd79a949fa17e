"""The codes scripts and orchestrators rely on: exit statuses and error codes never drift."""

from __future__ import annotations

from pathlib import Path

import pytest

from memkd_stream.errors import ErrorCode, ExitCode, MemkdStreamError
from memkd_stream.lines.errors import UnknownLine


def test_exit_codes_are_the_documented_ones() -> None:
    """README.md's table: Kubernetes and scripts branch on these numbers."""
    assert {code.name: int(code) for code in ExitCode} == {
        "OK": 0,
        "FAILED": 1,
        "USAGE": 2,
        "BROKER_UNREACHABLE": 3,
        "DEVICE_FAULT": 4,
        "NOT_ACTIVATED": 5,
        "INTERRUPTED": 130,
    }


@pytest.mark.parametrize("doc", ["README.md", "DESIGN.md"])
def test_the_documented_exit_code_tables_list_every_exit_code(repo_root: Path, doc: str) -> None:
    """Each exit status has a row in both tables, and neither table has a row for a status that
    does not exist."""
    rows = set()
    for line in (repo_root / doc).read_text().splitlines():
        cells = [c.strip() for c in line.strip().split("|")]
        if len(cells) == 5 and cells[1].isdigit():  # | code | memkd-stream | memkd-worker |
            rows.add(int(cells[1]))
    assert rows == {int(code) for code in ExitCode}


def test_error_codes_are_unique_kebab_case() -> None:
    values = [code.value for code in ErrorCode]
    assert len(values) == len(set(values))
    assert all(v == v.lower() and " " not in v and "_" not in v for v in values)


def test_an_error_carries_its_class_code_or_the_one_given() -> None:
    assert UnknownLine("line A is not known").code == ErrorCode.UNKNOWN_LINE == "unknown-line"
    given = MemkdStreamError("Redis refused", code=ErrorCode.REDIS_UNAVAILABLE)
    assert given.code == "redis-unavailable" and given.message == "Redis refused"
    assert repr(given) == "MemkdStreamError(code='redis-unavailable', message='Redis refused')"


def test_both_error_bases_take_the_same_arguments() -> None:
    from memkd.errors import MemKDError

    for base in (MemKDError, MemkdStreamError):
        error = base("what to do", code="some-code")
        assert (str(error), error.code, error.message) == ("what to do", "some-code", "what to do")
        with pytest.raises(TypeError):
            base("message", "positional-code")  # type: ignore[misc]

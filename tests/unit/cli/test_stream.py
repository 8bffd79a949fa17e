"""Pure parts of ``memkd-stream produce/results/topics``: which files are sent, under which ids,
the help text and the one-line errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from memkd_stream.cli.main import build_parser
from memkd_stream.cli.stream import (
    CONNECT_TIMEOUT_S,
    _brief,
    _parse_headers,
    _row,
    collect_images,
    plural,
)


def test_collect_images_walks_folders_sorted_with_relative_ids(tmp_path: Path) -> None:
    (tmp_path / "test" / "good").mkdir(parents=True)
    (tmp_path / "test" / "crack").mkdir()
    for rel in ("good/001.png", "good/000.png", "crack/000.PNG", "good/notes.txt"):
        (tmp_path / "test" / rel).write_bytes(b"x")
    single = tmp_path / "one.jpg"
    single.write_bytes(b"y")
    got = collect_images([tmp_path / "test", single])
    assert [i for _, i in got] == ["crack/000.PNG", "good/000.png", "good/001.png", "one.jpg"]


def test_collect_images_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        collect_images([tmp_path / "nope"])


def test_headers_parse_and_reject() -> None:
    assert _parse_headers(["station=7", "part=a=b"]) == [("station", b"7"), ("part", b"a=b")]
    with pytest.raises(argparse.ArgumentTypeError):
        _parse_headers(["novalue"])


def test_rows_for_results_and_dead_letters() -> None:
    result = {
        "id": "x", "line": "A", "model_version": "A@2", "score": 0.5, "threshold": 0.4,
        "anomalous": True, "mask": {"format": "png", "data": "aGk="},
    }  # fmt: skip
    assert _row(result)[-1] == "ANOMALOUS"
    assert _brief(result)["mask"] == {"format": "png", "bytes": 2}
    dead = {
        "id": "y", "line": "A", "error": "line-unavailable", "replay_count": 2,
        "source": "memkd.inspect:0:7", "detail": "Redis down",
    }  # fmt: skip
    assert _row(dead) == ["y", "A", "line-unavailable", "2", "memkd.inspect:0:7", "Redis down"]


def test_plural() -> None:
    assert plural(1, "image") == "1 image"
    assert plural(0, "image") == "0 images"
    assert plural(3, "record") == "3 records"


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_help_has_examples_descriptions_and_metavars(capsys: pytest.CaptureFixture[str]) -> None:
    for command in (("produce",), ("results",), ("topics",), ("topics", "create")):
        text = _help(capsys, *command)
        assert "examples:" in text, command
        assert f"memkd-stream {command[0]} " in text.split("examples:")[1], command
    create = _help(capsys, "topics", "create")
    assert "--partitions N" in create
    assert "--connect-timeout S" in create
    assert "never altered" in create  # the description
    assert "inspect (camera images in)" in _help(capsys, "topics")
    for command in ("produce", "results"):
        assert "--connect-timeout S" in _help(capsys, command)


def test_connect_timeout_defaults_to_ten_seconds() -> None:
    args = build_parser().parse_args(["results"])
    assert args.connect_timeout == CONNECT_TIMEOUT_S == 10.0
    args = build_parser().parse_args(["topics", "create", "--connect-timeout", "2.5"])
    assert args.connect_timeout == 2.5

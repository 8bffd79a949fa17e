"""Pure parts of ``memkd-stream produce/results``: which files are sent, under which ids."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from memkd_stream.cli.stream import _brief, _parse_headers, _row, collect_images


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
    dead = {"id": "y", "line": "A", "error": "decode-error"}
    assert _row(dead)[-1] == "DLQ decode-error"

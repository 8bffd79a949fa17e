"""The results reader's parsing: a result is its JSON plus headers, a dead letter its headers."""

from __future__ import annotations

import json

from memkd_stream.broker.results import parse_record


def test_a_result_is_its_json_with_the_record_headers() -> None:
    value = json.dumps({"schema": 1, "id": "img-1", "score": 0.5}).encode()
    doc = parse_record(value, [("memkd-id", b"img-1"), ("station", b"\xff7")], "A")
    assert doc == {
        "schema": 1,
        "id": "img-1",
        "score": 0.5,
        "headers": {"memkd-id": "img-1", "station": "\ufffd7"},
    }


def test_a_dead_letter_is_read_from_its_headers_not_its_image() -> None:
    headers = [
        ("memkd-error", b"decode-error"),
        ("memkd-error-detail", b"not a recognised image"),
        ("memkd-source", b"memkd.inspect:0:7"),
    ]
    doc = parse_record(b"\x89PNG...", headers, "A")
    assert doc["error"] == "decode-error" and doc["detail"] == "not a recognised image"
    assert doc["id"] == doc["source"] == "memkd.inspect:0:7"  # no memkd-id: the source names it
    assert doc["line"] == "A"
    assert doc["replay_count"] == 0  # never replayed


def test_a_dead_letter_shows_how_often_it_was_replayed() -> None:
    headers = [("memkd-error", b"line-unavailable"), ("memkd-replay-count", b"2")]
    assert parse_record(b"img", headers, "A")["replay_count"] == 2
    garbled = [("memkd-error", b"stale"), ("memkd-replay-count", b"lots")]
    assert parse_record(b"img", garbled, "A")["replay_count"] is None

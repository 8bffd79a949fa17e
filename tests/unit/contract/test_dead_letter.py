"""Dead letters (DESIGN.md §3): the original record plus the reason, trimmed to fit."""

from __future__ import annotations

import pytest

from memkd_stream.contract.codes import DeadLetterCode
from memkd_stream.contract.dead_letter import dead_letter
from memkd_stream.contract.headers import MAX_DETAIL_BYTES


def test_dead_letter_keeps_the_record_and_adds_provenance() -> None:
    headers = [("serial", b"SN-1"), ("memkd-id", b"img-1")]
    dl = dead_letter(
        "memkd.inspect", 2, 17, b"A", b"bytes", headers, "decode-error", "bad PNG", 1000
    )
    assert dl.key == b"A"
    assert dl.value == b"bytes"
    assert dl.headers == [
        ("serial", b"SN-1"),
        ("memkd-id", b"img-1"),
        ("memkd-error", b"decode-error"),
        ("memkd-error-detail", b"bad PNG"),
        ("memkd-source", b"memkd.inspect:2:17"),
    ]


def test_dead_letter_drops_a_value_too_large_to_republish() -> None:
    dl = dead_letter("t", 0, 1, b"A", b"x" * 101, [], "image-too-large", "big", 100)
    assert dl.value is None
    assert ("memkd-value-dropped", b"101") in dl.headers
    kept = dead_letter("t", 0, 1, b"A", b"x" * 100, [], "image-too-large", "big", 100)
    assert kept.value == b"x" * 100
    assert all(name != "memkd-value-dropped" for name, _ in kept.headers)


def test_dead_letter_replaces_stale_error_headers_of_a_redriven_record() -> None:
    old = [
        ("memkd-error", b"line-unavailable"),
        ("Memkd-Error-Detail", b"old"),
        ("memkd-source", b"memkd.inspect.dlq:0:1"),
        ("memkd-value-dropped", b"5"),
        ("serial", b"SN"),
    ]
    dl = dead_letter("memkd.inspect", 0, 9, None, None, old, "unknown-line", "new", 10)
    assert dl.key is None and dl.value is None
    assert dl.headers == [
        ("serial", b"SN"),
        ("memkd-error", b"unknown-line"),
        ("memkd-error-detail", b"new"),
        ("memkd-source", b"memkd.inspect:0:9"),
    ]


def test_dead_letter_detail_is_capped_on_a_character_boundary() -> None:
    dl = dead_letter("t", 0, 0, b"A", b"v", None, "model-error", "ü" * 5000, 10)
    detail = dict(dl.headers)["memkd-error-detail"]
    assert len(detail) <= MAX_DETAIL_BYTES
    assert detail.decode("utf-8").endswith("...")


def test_dead_letter_codes_are_the_contract_codes() -> None:
    assert [code.value for code in DeadLetterCode] == [
        "decode-error",
        "image-too-large",
        "unknown-line",
        "line-unavailable",
        "bad-header",
        "model-error",
    ]
    with pytest.raises(ValueError, match="unknown dead-letter code"):
        dead_letter("t", 0, 0, b"A", b"v", None, "oops", "x", 10)

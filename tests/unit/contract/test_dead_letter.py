"""Dead letters (DESIGN.md §3): the original record plus the reason, trimmed to fit."""

from __future__ import annotations

import pytest

from memkd_stream.contract.codes import DeadLetterCode
from memkd_stream.contract.dead_letter import dead_letter
from memkd_stream.contract.headers import MAX_DETAIL_BYTES
from memkd_stream.contract.sizes import record_size


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
    limit = 1000
    fits = dead_letter("t", 0, 1, b"A", b"x" * 700, [], "image-too-large", "big", limit)
    assert fits.value == b"x" * 700
    assert all(name != "memkd-value-dropped" for name, _ in fits.headers)
    dl = dead_letter("t", 0, 1, b"A", b"x" * 1000, [], "image-too-large", "big", limit)
    assert dl.value is None and dl.key == b"A"
    assert ("memkd-value-dropped", b"1000") in dl.headers
    assert record_size(dl.key, dl.value, dl.headers) <= limit


def test_no_key_and_a_dropped_value_still_make_a_sendable_record() -> None:
    """Kafka refuses a record with neither key nor value: that crash-looped the group once."""
    dl = dead_letter("t", 0, 1, None, b"x" * 5000, [], "bad-header", "no key", 1000)
    assert dl.key == b"" and dl.value is None
    assert ("memkd-value-dropped", b"5000") in dl.headers


def test_sender_headers_that_do_not_fit_are_dropped_largest_first() -> None:
    headers = [("small", b"1"), ("huge", b"h" * 5000), ("memkd-id", b"img-1")]
    dl = dead_letter("t", 0, 1, b"A", b"v", headers, "decode-error", "bad", 2000)
    names = [name for name, _ in dl.headers]
    assert "huge" not in names and "small" in names and "memkd-id" in names
    assert dict(dl.headers)["memkd-headers-dropped"] == str(len("huge") + 5000).encode()
    assert record_size(dl.key, dl.value, dl.headers) <= 2000


def test_a_key_too_large_is_dropped_last() -> None:
    dl = dead_letter("t", 0, 1, b"k" * 3000, None, [], "bad-header", "bad key", 2000)
    assert dl.key == b"" and dict(dl.headers)["memkd-key-dropped"] == b"3000"
    assert record_size(dl.key, dl.value, dl.headers) <= 2000


def test_dead_letter_replaces_stale_error_headers_of_a_redriven_record() -> None:
    old = [
        ("memkd-error", b"line-unavailable"),
        ("Memkd-Error-Detail", b"old"),
        ("memkd-source", b"memkd.inspect.dlq:0:1"),
        ("memkd-value-dropped", b"5"),
        ("serial", b"SN"),
    ]
    dl = dead_letter("memkd.inspect", 0, 9, b"A", None, old, "unknown-line", "new", 10_000)
    assert dl.key == b"A" and dl.value is None
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
        "unreadable-record",
        "stale",
    ]
    with pytest.raises(ValueError, match="unknown dead-letter code"):
        dead_letter("t", 0, 0, b"A", b"v", None, "oops", "x", 10)

"""Record sizes: the same bound the Kafka client checks, so a fitted record is never refused."""

from __future__ import annotations

import pytest
from kafka.record.default_records import DefaultRecordBatchBuilder

from memkd_stream.contract.sizes import fit_headers, record_size


@pytest.mark.parametrize(
    ("key", "value", "headers"),
    [
        (None, None, []),
        (b"A", b"x" * 100, [("a", b"b")]),
        (b"k" * 300, b"y" * 70_000, [("h" * 200, b"z" * 5000)] * 3),
        (b"", None, [("ü-name", b"")] * 70),  # >63 headers: a two-byte count varint
    ],
)
def test_record_size_is_the_clients_own_bound(key, value, headers) -> None:
    assert record_size(key, value, headers) == DefaultRecordBatchBuilder.estimate_size_in_bytes(
        key, value, headers
    )


def test_fit_keeps_fixed_headers_and_as_many_others_as_fit() -> None:
    fixed = [("memkd-id", b"img")]
    many = [(f"h{i}", b"v" * (10 * i)) for i in range(50)]
    out = fit_headers(b"A", b"x" * 500, many, fixed, 4000)
    assert record_size(b"A", b"x" * 500, out) <= 4000
    assert ("memkd-id", b"img") in out and out[-1][0] == "memkd-headers-dropped"
    kept = [h for h in out if h in many]
    assert kept == [h for h in many if h in kept]  # original order
    assert max(len(v) for _, v in kept) < max(len(v) for _, v in many)  # the largest went


def test_fit_changes_nothing_that_fits() -> None:
    headers = [("a", b"1")]
    assert fit_headers(b"A", b"x", headers, [("memkd-id", b"i")], 10_000) == [
        ("a", b"1"),
        ("memkd-id", b"i"),
    ]

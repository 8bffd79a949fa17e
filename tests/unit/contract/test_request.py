"""Requests (DESIGN.md §3): a record becomes a validated ``Request`` or a dead-letter code."""

from __future__ import annotations

import pytest

from memkd_stream.contract.errors import BadRequest
from memkd_stream.contract.request import Request, Source, parse_request

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _parse(key: bytes | None = b"A", value: bytes | None = b"img", headers=None) -> Request:
    return parse_request("memkd.inspect", 3, 42, key, value, headers, received_at=100.0)


def _code(exc: pytest.ExceptionInfo[BadRequest]) -> str:
    return exc.value.code


def test_minimal_request_defaults_id_to_source() -> None:
    request = _parse()
    assert request.line == "A"
    assert request.id == "memkd.inspect:3:42"
    assert request.value == b"img"
    assert request.source == Source("memkd.inspect", 3, 42)
    assert str(request.source) == "memkd.inspect:3:42"
    assert request.sent_at_ms is None and request.traceparent is None
    assert request.headers_passthrough == []
    assert request.received_at == 100.0


def test_known_headers_are_parsed_and_others_pass_through_in_order() -> None:
    headers = [
        ("serial", b"SN-1"),
        ("memkd-id", "img-ü-1".encode()),
        ("station", b"\x00\xffbinary"),
        ("memkd-sent-at", b"1700000000123"),
        ("traceparent", TRACEPARENT.encode()),
        ("serial", b"SN-2"),
    ]
    request = _parse(key=b"press-3", headers=headers)
    assert request.line == "press-3"
    assert request.id == "img-ü-1"
    assert request.sent_at_ms == 1700000000123
    assert request.traceparent == TRACEPARENT
    assert request.headers_passthrough == [
        ("serial", b"SN-1"),
        ("station", b"\x00\xffbinary"),
        ("serial", b"SN-2"),
    ]


def test_known_header_names_are_case_insensitive() -> None:
    request = _parse(headers=[("MemKD-Id", b"x"), ("TraceParent", TRACEPARENT.encode())])
    assert request.id == "x"
    assert request.traceparent == TRACEPARENT


def test_none_header_value_passes_through_as_empty() -> None:
    assert _parse(headers=[("flag", None)]).headers_passthrough == [("flag", b"")]


@pytest.mark.parametrize(
    "key",
    [None, b"", b"-A", b"A B", b"A:1", b"x" * 65, b"\xff\xfe", "ü".encode()],
)
def test_bad_key_is_bad_header(key: bytes | None) -> None:
    with pytest.raises(BadRequest) as exc:
        _parse(key=key)
    assert _code(exc) == "bad-header"
    assert exc.value.message


@pytest.mark.parametrize(
    "raw",
    [b"", b"x" * 257, "é".encode() * 129, b"\xff", b"a\nb"],  # "é" * 129: 258 bytes
)
def test_malformed_memkd_id_is_bad_header(raw: bytes) -> None:
    """The id joins a result to its image: a wrong one must not be guessed."""
    with pytest.raises(BadRequest) as exc:
        _parse(headers=[("memkd-id", raw)])
    assert _code(exc) == "bad-header"
    assert "memkd-id" in exc.value.message


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("memkd-sent-at", b""),
        ("memkd-sent-at", b"12.5"),
        ("memkd-sent-at", b"-5"),
        ("memkd-sent-at", b"soon"),
        ("traceparent", b"garbage"),
        ("traceparent", b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),  # uppercase
        ("traceparent", b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("traceparent", b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
        ("traceparent", (TRACEPARENT + "-extra").encode()),  # version 00 has no extra fields
        ("Traceparent", b"\xff\xfe"),
    ],
)
def test_malformed_optional_metadata_is_passed_through_and_ignored(name: str, raw: bytes) -> None:
    """W3C: a malformed traceparent is ignored; a bad send time falls back to the record's."""
    request = _parse(headers=[("serial", b"1"), (name, raw), ("station", b"7")])
    assert request.sent_at_ms is None and request.traceparent is None
    assert request.headers_passthrough == [("serial", b"1"), (name, raw), ("station", b"7")]
    assert request.ignored_headers == (name.lower(),)


def test_repeated_optional_metadata_is_ignored_not_guessed() -> None:
    headers = [("memkd-sent-at", b"1"), ("memkd-sent-at", b"2"), ("traceparent", TRACEPARENT)]
    request = _parse(headers=[(n, v if isinstance(v, bytes) else v.encode()) for n, v in headers])
    assert request.sent_at_ms is None and request.traceparent == TRACEPARENT
    assert request.headers_passthrough == [("memkd-sent-at", b"1"), ("memkd-sent-at", b"2")]
    assert request.ignored_headers == ("memkd-sent-at",)


def test_send_time_falls_back_to_the_record_timestamp_then_receipt() -> None:
    at = parse_request("t", 0, 1, b"A", b"v", [("memkd-sent-at", b"soon")], received_at=9.0)
    assert at.sent_at_s == 9.0
    stamped = parse_request("t", 0, 1, b"A", b"v", None, received_at=9.0, timestamp_ms=5000)
    assert stamped.sent_at_s == 5.0
    sent = parse_request(
        "t", 0, 1, b"A", b"v", [("memkd-sent-at", b"7000")], received_at=9.0, timestamp_ms=5000
    )
    assert sent.sent_at_s == 7.0


def test_id_of_exactly_256_bytes_is_accepted() -> None:
    raw = "é".encode() * 128
    assert len(raw) == 256
    assert _parse(headers=[("memkd-id", raw)]).id == "é" * 128


def test_future_traceparent_version_may_carry_more_fields() -> None:
    value = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"
    assert _parse(headers=[("traceparent", value.encode())]).traceparent == value


def test_repeated_memkd_id_is_bad_header() -> None:
    with pytest.raises(BadRequest) as exc:
        _parse(headers=[("memkd-id", b"a"), ("memkd-id", b"b")])
    assert _code(exc) == "bad-header"


@pytest.mark.parametrize("value", [b"", None])
def test_empty_value_is_decode_error(value: bytes | None) -> None:
    with pytest.raises(BadRequest) as exc:
        _parse(value=value)
    assert _code(exc) == "decode-error"


def test_bad_key_wins_over_empty_value() -> None:
    with pytest.raises(BadRequest) as exc:
        _parse(key=None, value=b"")
    assert _code(exc) == "bad-header"

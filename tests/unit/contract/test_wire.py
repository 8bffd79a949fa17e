"""Wire format (DESIGN.md §3): request parsing, result JSON, dead-letter records."""

from __future__ import annotations

import base64
import json

import pytest

from memkd_stream.contract.wire import (
    ERROR_CODES,
    MAX_DETAIL_BYTES,
    BadRequest,
    Request,
    Source,
    dead_letter,
    encode_result,
    parse_request,
    result_headers,
)

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _parse(key: bytes | None = b"A", value: bytes | None = b"img", headers=None) -> Request:
    return parse_request("memkd.inspect", 3, 42, key, value, headers, received_at=100.0)


def _code(exc: pytest.ExceptionInfo[BadRequest]) -> str:
    return exc.value.code


# --------------------------------------------------------------------------- requests
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
    assert exc.value.detail


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("memkd-id", b""),
        ("memkd-id", b"x" * 257),
        ("memkd-id", "é".encode() * 129),  # 258 bytes, 129 characters
        ("memkd-id", b"\xff"),
        ("memkd-id", b"a\nb"),
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
    ],
)
def test_malformed_known_header_is_bad_header(name: str, raw: bytes) -> None:
    with pytest.raises(BadRequest) as exc:
        _parse(headers=[(name, raw)])
    assert _code(exc) == "bad-header"
    assert name in exc.value.detail


def test_id_of_exactly_256_bytes_is_accepted() -> None:
    raw = "é".encode() * 128
    assert len(raw) == 256
    assert _parse(headers=[("memkd-id", raw)]).id == "é" * 128


def test_future_traceparent_version_may_carry_more_fields() -> None:
    value = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"
    assert _parse(headers=[("traceparent", value.encode())]).traceparent == value


def test_repeated_known_header_is_bad_header() -> None:
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


# --------------------------------------------------------------------------- results
def _result(request: Request, score: float = 0.83, threshold: float = 0.61) -> dict:
    raw = encode_result(
        request,
        model_version="A@7",
        score=score,
        threshold=threshold,
        image_hw=(2048, 2448),
        mask_png=b"\x89PNG fake",
        mask_hw=(256, 256),
        timing_ms={"queue": 3.14159, "infer": 11.8, "total": 19.0, "extra": 1.0},
        worker="pod-x",
    )
    assert isinstance(raw, bytes)
    return json.loads(raw.decode("utf-8"))


def test_result_json_matches_the_contract_exactly() -> None:
    doc = _result(_parse(headers=[("memkd-id", b"img-1")]))
    assert list(doc) == [
        "schema",
        "id",
        "line",
        "model_version",
        "score",
        "threshold",
        "anomalous",
        "image",
        "mask",
        "source",
        "timing_ms",
        "worker",
    ]
    assert doc == {
        "schema": 1,
        "id": "img-1",
        "line": "A",
        "model_version": "A@7",
        "score": 0.83,
        "threshold": 0.61,
        "anomalous": True,
        "image": {"height": 2048, "width": 2448},
        "mask": {
            "format": "png",
            "encoding": "base64",
            "height": 256,
            "width": 256,
            "data": base64.b64encode(b"\x89PNG fake").decode("ascii"),
        },
        "source": {"topic": "memkd.inspect", "partition": 3, "offset": 42},
        "timing_ms": {"queue": 3.142, "infer": 11.8, "total": 19.0},
        "worker": "pod-x",
    }


@pytest.mark.parametrize(
    ("score", "threshold", "anomalous"), [(0.5, 0.6, False), (0.6, 0.6, True), (0.7, 0.6, True)]
)
def test_anomalous_is_score_at_or_above_threshold(
    score: float, threshold: float, anomalous: bool
) -> None:
    assert _result(_parse(), score, threshold)["anomalous"] is anomalous


def test_result_keeps_non_ascii_ids_as_utf8() -> None:
    request = _parse(headers=[("memkd-id", "Prüfling-7".encode())])
    assert _result(request)["id"] == "Prüfling-7"


@pytest.mark.parametrize("score", [float("nan"), float("inf")])
def test_non_finite_score_is_refused(score: float) -> None:
    with pytest.raises(ValueError, match="score"):
        _result(_parse(), score=score)


def test_result_headers_pass_request_headers_through() -> None:
    request = _parse(
        headers=[
            ("serial", b"SN-1"),
            ("memkd-sent-at", b"1700000000123"),
            ("traceparent", TRACEPARENT.encode()),
        ]
    )
    assert result_headers(request) == [
        ("serial", b"SN-1"),
        ("memkd-id", b"memkd.inspect:3:42"),
        ("memkd-sent-at", b"1700000000123"),
        ("traceparent", TRACEPARENT.encode()),
    ]
    assert result_headers(_parse()) == [("memkd-id", b"memkd.inspect:3:42")]


# --------------------------------------------------------------------------- dead letters
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
    assert ERROR_CODES == (
        "decode-error",
        "image-too-large",
        "unknown-line",
        "line-unavailable",
        "bad-header",
        "model-error",
    )
    with pytest.raises(ValueError, match="unknown dead-letter code"):
        dead_letter("t", 0, 0, b"A", b"v", None, "oops", "x", 10)

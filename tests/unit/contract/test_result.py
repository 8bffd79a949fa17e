"""Results (DESIGN.md §3): the result JSON byte-exact to the contract, and its Kafka headers."""

from __future__ import annotations

import base64
import json

import pytest

from memkd_stream.contract.request import Request, parse_request
from memkd_stream.contract.result import encode_result, result_headers
from memkd_stream.contract.sizes import record_size

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _parse(key: bytes | None = b"A", value: bytes | None = b"img", headers=None) -> Request:
    return parse_request("memkd.inspect", 3, 42, key, value, headers, received_at=100.0)


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
    assert result_headers(request, b"A", b"{}", 1 << 20) == [
        ("serial", b"SN-1"),
        ("memkd-id", b"memkd.inspect:3:42"),
        ("memkd-sent-at", b"1700000000123"),
        ("traceparent", TRACEPARENT.encode()),
    ]
    assert result_headers(_parse(), b"A", b"{}", 1 << 20) == [("memkd-id", b"memkd.inspect:3:42")]


def test_pass_through_headers_that_do_not_fit_are_left_out_and_said_so() -> None:
    """A sender's 1 MiB of headers must not make a 1 MiB-limited result undeliverable."""
    big, small = ("blob", b"x" * 600_000), ("serial", b"SN-1")
    request = _parse(headers=[big, ("memkd-id", b"img-1"), small, ("blob2", b"y" * 600_000)])
    value = b"{}" * 1000
    headers = result_headers(request, b"A", value, 1 << 20)
    assert headers[:2] == [small, ("memkd-id", b"img-1")] or headers[0] == big
    assert headers[-1][0] == "memkd-headers-dropped"
    assert record_size(b"A", value, headers) <= 1 << 20
    assert ("memkd-id", b"img-1") in headers  # the join key always stays


def test_a_result_that_cannot_fit_is_refused() -> None:
    with pytest.raises(ValueError, match="limit"):
        result_headers(_parse(), b"A", b"x" * 2000, 1000)


def test_a_shadow_verdict_is_an_optional_object_beside_the_active_one() -> None:
    from memkd_stream.contract.result import ShadowVerdict

    request = _parse(headers=[("memkd-id", b"img-1")])

    def encoded(shadow: ShadowVerdict) -> dict:
        raw = encode_result(
            request, model_version="A@7", score=0.83, threshold=0.61, image_hw=(8, 8),
            mask_png=b"png", mask_hw=(8, 8), timing_ms={"queue": 1, "infer": 1, "total": 2},
            worker="w", shadow=shadow,
        )  # fmt: skip
        return json.loads(raw)

    doc = encoded(ShadowVerdict("A@9", score=0.5, threshold=0.6))
    assert doc["schema"] == 1 and doc["model_version"] == "A@7" and doc["anomalous"] is True
    assert doc["shadow"] == {"model_version": "A@9", "score": 0.5, "threshold": 0.6,
                             "anomalous": False}  # fmt: skip
    failed = encoded(ShadowVerdict("A@9", error="RuntimeError: boom"))
    assert failed["shadow"] == {"model_version": "A@9", "error": "RuntimeError: boom"}
    assert "shadow" not in _result(request)  # absent when the line has no shadow
    with pytest.raises(ValueError, match=r"shadow\.score"):
        encoded(ShadowVerdict("A@9", score=float("nan"), threshold=0.6))

"""Results: the JSON value and the Kafka headers of a result record (DESIGN.md §3).

The JSON has exactly the keys of §3 (``late_ms`` only when the image was late). The request's
headers travel as the *Kafka headers of the result record*: the passed-through ones (as many as
fit the size limit), then ``memkd-id`` (the effective id), ``memkd-sent-at`` and ``traceparent``
when the request had them.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from typing import Any

from memkd_stream.contract.headers import HEADER_ID, HEADER_SENT_AT, HEADER_TRACEPARENT, Headers
from memkd_stream.contract.request import Request
from memkd_stream.contract.sizes import fit_headers, record_size

__all__ = ["RESULT_SCHEMA", "ShadowVerdict", "encode_result", "result_headers"]

RESULT_SCHEMA = 1


@dataclass(frozen=True)
class ShadowVerdict:
    """The optional ``shadow`` object: what a version tried beside the active one said (its
    score, threshold and verdict), or why it could not say (``error``)."""

    model_version: str
    score: float | None = None
    threshold: float | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.error is not None or self.score is None or self.threshold is None:
            return {"model_version": self.model_version, "error": self.error or "no score"}
        score = _finite("shadow.score", self.score)
        threshold = _finite("shadow.threshold", self.threshold)
        return {"model_version": self.model_version, "score": score, "threshold": threshold,
                "anomalous": score >= threshold}  # fmt: skip


def _finite(name: str, value: float) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} is not a finite number: {number}")
    return number


def encode_result(
    request: Request,
    *,
    model_version: str,
    score: float,
    threshold: float,
    image_hw: tuple[int, int],
    mask_png: bytes,
    mask_hw: tuple[int, int],
    timing_ms: dict[str, float],
    worker: str,
    shadow: ShadowVerdict | None = None,
    late_ms: float | None = None,
) -> bytes:
    """Render the result JSON of DESIGN.md §3 (keys and nesting exactly as the contract);
    ``shadow`` adds the optional ``shadow`` object.

    ``late_ms`` (how far past ``worker.max_age_ms`` the image was when scored) is present only
    when the image was late (``contract.lateness``).

    Raises:
        ValueError: the score or threshold is not finite (the caller dead-letters as model-error).
    """
    score = _finite("score", score)
    threshold = _finite("threshold", threshold)
    document = {
        "schema": RESULT_SCHEMA,
        "id": request.id,
        "line": request.line,
        "model_version": model_version,
        "score": score,
        "threshold": threshold,
        "anomalous": score >= threshold,
        "image": {"height": int(image_hw[0]), "width": int(image_hw[1])},
        "mask": {
            "format": "png",
            "encoding": "base64",
            "height": int(mask_hw[0]),
            "width": int(mask_hw[1]),
            "data": base64.b64encode(mask_png).decode("ascii"),
        },
        "source": {
            "topic": request.source.topic,
            "partition": request.source.partition,
            "offset": request.source.offset,
        },
        "timing_ms": {
            name: round(_finite(f"timing_ms.{name}", timing_ms[name]), 3)
            for name in ("queue", "infer", "total")
        },
        "worker": worker,
    }
    if shadow is not None:
        document["shadow"] = shadow.to_json()
    if late_ms is not None:
        document["late_ms"] = round(_finite("late_ms", late_ms), 3)
    return json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(
        "utf-8"
    )


def result_headers(request: Request, key: bytes, value: bytes, max_record_bytes: int) -> Headers:
    """Kafka headers for the result record: the request's pass-through headers, then the known
    ones (``memkd-id`` always, ``memkd-sent-at`` and ``traceparent`` when the request had them).

    Pass-through headers that would push the record over ``max_record_bytes`` are left out,
    largest first, and ``memkd-headers-dropped: <bytes>`` says so.

    Raises:
        ValueError: the result does not fit even without them (the caller dead-letters it).
    """
    known: Headers = [(HEADER_ID, request.id.encode("utf-8"))]
    if request.sent_at_ms is not None:
        known.append((HEADER_SENT_AT, str(request.sent_at_ms).encode("ascii")))
    if request.traceparent is not None:
        known.append((HEADER_TRACEPARENT, request.traceparent.encode("ascii")))
    if record_size(key, value, known) > max_record_bytes:
        raise ValueError(
            f"the result is {record_size(key, value, known)} bytes, over the "
            f"{max_record_bytes}-byte limit (kafka.max_message_bytes)"
        )
    return fit_headers(key, value, list(request.headers_passthrough), known, max_record_bytes)

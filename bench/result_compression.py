"""What producer compression buys on the worker's results: bytes saved vs CPU spent per codec.

A result is JSON carrying the anomaly mask as a base64 PNG (DESIGN.md §3). The PNG is already
deflate-compressed, so a codec can only win back what base64 spends (6 bits of 8). Masks here are
rendered the way the worker renders them (``memkd.anomaly.render_mask``, ``encode_mask_png``)
from smooth maps with a few blobs, like a blurred anomaly map. Figures, not pass/fail.

    .venv/bin/python bench/result_compression.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from kafka import codec
from memkd.anomaly import gaussian_blur, render_mask

from memkd_stream.contract.request import parse_request
from memkd_stream.contract.result import encode_result
from memkd_stream.worker.decode import encode_mask_png

CODECS = {
    "gzip": codec.gzip_encode,
    "snappy": codec.snappy_encode,
    "lz4": codec.lz4_encode,
    "zstd": codec.zstd_encode,
}


def _results(n: int, size: int, seed: int = 0) -> list[bytes]:
    import torch

    rng = np.random.default_rng(seed)
    request = parse_request("memkd.inspect", 0, 0, b"A", b"img", None, received_at=0.0)
    out = []
    for i in range(n):
        raw = torch.from_numpy(rng.random((1, 1, size, size), dtype=np.float32)) * 0.2
        for _ in range(int(rng.integers(0, 3))):  # a defect or two
            y, x = rng.integers(0, size, 2)
            raw[0, 0, max(0, y - 6) : y + 6, max(0, x - 6) : x + 6] += 1.0
        blurred = gaussian_blur(raw)[0, 0].numpy()
        png = encode_mask_png(render_mask(blurred, threshold=0.5))
        out.append(
            encode_result(
                request,
                model_version="A@1",
                score=float(blurred.max()),
                threshold=0.5,
                image_hw=(2048, 2448),
                mask_png=png,
                mask_hw=(size, size),
                timing_ms={"queue": 1.0, "infer": 10.0, "total": 20.0},
                worker=f"pod-{i}",
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer results and repetitions")
    args = parser.parse_args(argv)
    n, reps = (16, 5) if args.quick else (64, 20)
    results = _results(n, 256)
    batch = b"".join(results)  # what one producer batch of results holds
    print(f"{n} results of 256x256 masks, {len(batch) / n:.0f} bytes each uncompressed")
    print(f"{'codec':<8} {'size ratio':>10} {'ms per result':>14}")
    for name, encode in CODECS.items():
        started = time.perf_counter()
        for _ in range(reps):
            packed = encode(batch)
        per_result_ms = (time.perf_counter() - started) / reps / n * 1000
        print(f"{name:<8} {len(packed) / len(batch):>10.3f} {per_result_ms:>14.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

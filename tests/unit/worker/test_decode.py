"""Image decoding: formats and modes, guards before decompression, ROI, EXIF, PNG masks."""

from __future__ import annotations

import io
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from memkd.preprocess import load_for_model, load_image, preprocess
from PIL import Image

from memkd_stream.worker.decode import DecodedImage, DecodeFailed, ImageDecoder, encode_mask_png

SIZE = 32
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _pattern(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (height, width, channels) if channels > 1 else (height, width)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _gray16(height: int, width: int) -> Image.Image:
    ramp = np.linspace(0, 65535, height * width).reshape(height, width).astype(np.uint16)
    return Image.fromarray(ramp)


def _decode(value: bytes, roi=None, max_pixels: int = 10_000_000) -> DecodedImage:
    return ImageDecoder(max_pixels).decode(value, size=SIZE, mean=MEAN, std=STD, roi=roi)


def _failure(value: bytes, **kwargs: object) -> DecodeFailed:
    with pytest.raises(DecodeFailed) as exc:
        _decode(value, **kwargs)  # type: ignore[arg-type]
    return exc.value


CASES = {
    "jpeg-rgb": lambda: _encode(Image.fromarray(_pattern(40, 48)), "JPEG", quality=90),
    "jpeg-gray": lambda: _encode(Image.fromarray(_pattern(40, 48, 1)), "JPEG"),
    "png-rgb": lambda: _encode(Image.fromarray(_pattern(40, 48)), "PNG"),
    "png-gray": lambda: _encode(Image.fromarray(_pattern(40, 48, 1)), "PNG"),
    "png-rgba": lambda: _encode(Image.fromarray(_pattern(40, 48, 4)), "PNG"),
    "png-palette": lambda: _encode(Image.fromarray(_pattern(40, 48)).convert("P"), "PNG"),
    "png-gray16": lambda: _encode(_gray16(40, 48), "PNG"),
    "bmp-rgb": lambda: _encode(Image.fromarray(_pattern(40, 48)), "BMP"),
    "bmp-gray": lambda: _encode(Image.fromarray(_pattern(40, 48, 1)), "BMP"),
    "tiff-rgb": lambda: _encode(Image.fromarray(_pattern(40, 48)), "TIFF"),
    "tiff-gray": lambda: _encode(Image.fromarray(_pattern(40, 48, 1)), "TIFF"),
    "tiff-gray16": lambda: _encode(_gray16(40, 48), "TIFF"),
    "tiff-rgb-lzw": lambda: _encode(
        Image.fromarray(_pattern(40, 48)), "TIFF", compression="tiff_lzw"
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_format_and_mode_decodes_like_the_library(case: str) -> None:
    value = CASES[case]()
    decoded = _decode(value)
    assert (decoded.height, decoded.width) == (40, 48)
    assert decoded.tensor.shape == (3, SIZE, SIZE)
    assert decoded.tensor.dtype == torch.float32
    # The worker's pixels are exactly the library's (fit/eval) pixels for the same bytes.
    expected = preprocess(load_image(value), SIZE, MEAN, STD)
    assert torch.equal(decoded.tensor, expected)


def test_16_bit_gray_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16).repeat(4, axis=0)
    value = _encode(Image.fromarray(values), "PNG")
    decoded = ImageDecoder(1000).decode(value, size=4, mean=(0, 0, 0), std=(1, 1, 1))
    row = (decoded.tensor[0, 0] * 255).round().tolist()
    assert row == [0.0, 1.0, 128.0, 255.0]
    assert torch.equal(decoded.tensor[0], decoded.tensor[1])  # gray -> equal RGB channels


def test_exif_orientation_is_honoured() -> None:
    image = Image.fromarray(_pattern(30, 50))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    value = _encode(image, "JPEG", exif=exif.tobytes())
    decoded = _decode(value)
    assert (decoded.height, decoded.width) == (50, 30)


def test_roi_crops_before_resize() -> None:
    value = _encode(Image.fromarray(_pattern(40, 48)), "PNG")
    roi = (4, 6, 20, 24)
    decoded = _decode(value, roi=roi)
    assert (decoded.height, decoded.width) == (40, 48)  # the size as received
    assert torch.equal(decoded.tensor, preprocess(load_image(value), SIZE, MEAN, STD, roi))
    assert not torch.equal(decoded.tensor, preprocess(load_image(value), SIZE, MEAN, STD))


def test_camera_jpeg_is_decoded_at_the_scale_the_model_needs() -> None:
    """A 2448x2048 frame mounted sideways (EXIF 6) with an ROI: the worker's tensor is exactly
    memkd's reduced decode (parity with a full decode is memkd's test), the size the received."""
    frame = Image.fromarray(_pattern(64, 80)).resize((2448, 2048))
    exif = Image.Exif()
    exif[0x0112] = 6
    value = _encode(frame, "JPEG", exif=exif.tobytes())
    roi = (100, 300, 1500, 1200)
    decoded = _decode(value, roi=roi)
    assert (decoded.height, decoded.width) == (2448, 2048)  # as received, EXIF-oriented
    scaled = load_for_model(value, SIZE, roi)
    assert scaled.reduction == 8
    assert torch.equal(decoded.tensor, preprocess(scaled, SIZE, MEAN, STD, roi))


@pytest.mark.parametrize("roi", [(40, 0, 10, 10), (0, 0, 49, 40), (-1, 0, 5, 5), (0, 0, 0, 5)])
def test_roi_outside_the_image_is_decode_error(roi: tuple[int, int, int, int]) -> None:
    failure = _failure(_encode(Image.fromarray(_pattern(40, 48)), "PNG"), roi=roi)
    assert failure.code == "decode-error"
    assert "region of interest" in failure.message and "48x40" in failure.message


def test_zero_bytes_is_decode_error() -> None:
    assert _failure(b"").code == "decode-error"


@pytest.mark.parametrize(
    "value",
    [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, bytes(range(256)) * 4],
)
def test_garbage_is_decode_error(value: bytes) -> None:
    assert _failure(value).code == "decode-error"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "BMP"])
def test_truncated_image_is_decode_error(fmt: str) -> None:
    value = _encode(Image.fromarray(_pattern(64, 64)), fmt)
    failure = _failure(value[: len(value) // 2])
    assert failure.code == "decode-error"


def test_other_formats_are_refused() -> None:
    value = _encode(Image.fromarray(_pattern(20, 20)), "GIF")
    failure = _failure(value)
    assert failure.code == "decode-error"
    assert "GIF" in failure.message


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` but carries a few bytes of pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_huge_dimensions_are_refused_from_the_header() -> None:
    value = _png_header_only(100_000, 100_000)
    assert len(value) < 200
    started = time.perf_counter()
    failure = _failure(value, max_pixels=50_000_000)
    assert failure.code == "image-too-large"
    assert "50000000" in failure.message
    assert time.perf_counter() - started < 1.0  # nothing was decompressed or allocated
    # Below Pillow's own guard, this decoder's header check is what refuses it.
    failure = _failure(_png_header_only(10_000, 6_000), max_pixels=50_000_000)
    assert failure.code == "image-too-large"
    assert "10000x6000" in failure.message


def test_pixel_limit_is_inclusive() -> None:
    value = _encode(Image.fromarray(_pattern(10, 10)), "PNG")
    assert _decode(value, max_pixels=100).width == 10
    assert _failure(value, max_pixels=99).code == "image-too-large"


def test_pillows_own_bomb_guard_maps_to_image_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    decoder = ImageDecoder(10_000_000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses above 2x this
    value = _encode(Image.fromarray(_pattern(64, 64)), "PNG")
    with pytest.raises(DecodeFailed) as exc:
        decoder.decode(value, size=SIZE, mean=MEAN, std=STD)
    assert exc.value.code == "image-too-large"


def test_decoder_raises_pillows_limit_to_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    ImageDecoder(5000)
    assert Image.MAX_IMAGE_PIXELS == 5000
    ImageDecoder(10)
    assert Image.MAX_IMAGE_PIXELS == 5000  # never lowered


def test_decode_is_thread_safe() -> None:
    values = [CASES[name]() for name in sorted(CASES)] * 3
    serial = [_decode(v).tensor for v in values]
    decoder = ImageDecoder(10_000_000)
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(
            pool.map(lambda v: decoder.decode(v, size=SIZE, mean=MEAN, std=STD).tensor, values)
        )
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel, strict=True))


def test_mask_png_round_trips() -> None:
    mask = _pattern(17, 23, 1)
    png = encode_mask_png(mask)
    assert png.startswith(b"\x89PNG")
    with Image.open(io.BytesIO(png)) as image:
        assert image.mode == "L"
        assert np.array_equal(np.asarray(image), mask)


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.float32), np.zeros((4, 4, 3), np.uint8)])
def test_mask_png_needs_2d_uint8(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode_mask_png(bad)

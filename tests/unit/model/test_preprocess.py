"""The shared preprocessing: decoding corner cases, region of interest, normalisation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from memkd.preprocess import load_image, preprocess
from PIL import Image


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_exif_orientation_is_honoured() -> None:
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    out = load_image(buf.getvalue())
    assert out.size == (20, 40) and out.mode == "RGB"


def test_16_bit_gray_is_rescaled_not_clipped(tmp_path) -> None:
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(arr).save(path)
    out = np.asarray(load_image(path))
    assert out.shape == (1, 3, 3)
    assert out[0, :, 0].tolist() == [0, 128, 255]
    assert (out[..., 0] == out[..., 1]).all()


def test_gray_palette_and_alpha_become_rgb() -> None:
    for img in (
        Image.new("L", (4, 4), 77),
        Image.new("RGBA", (4, 4), (10, 20, 30, 255)),
        Image.new("RGB", (4, 4), (1, 2, 3)).convert("P"),
    ):
        out = load_image(_png(img))
        assert out.mode == "RGB" and out.size == (4, 4)
    assert np.asarray(load_image(_png(Image.new("L", (2, 2), 77))))[0, 0].tolist() == [77] * 3


def test_preprocess_normalises_with_the_teacher_statistics() -> None:
    img = Image.new("RGB", (50, 30), (255, 0, 51))
    x = preprocess(img, 64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    torch.testing.assert_close(x[:, 10, 10], torch.tensor([1.0, -1.0, -0.6]))


def test_roi_crops_before_resizing() -> None:
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, 40:] = (0, 0, 255)
    x = preprocess(Image.fromarray(arr), 32, (0, 0, 0), (1, 1, 1), roi=(40, 0, 40, 40))
    torch.testing.assert_close(x[2], torch.ones(32, 32))
    torch.testing.assert_close(x[0], torch.zeros(32, 32))
    with pytest.raises(ValueError, match="does not fit"):
        preprocess(Image.fromarray(arr), 32, (0, 0, 0), (1, 1, 1), roi=(50, 0, 40, 40))

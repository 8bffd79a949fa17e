"""Image loading and the one preprocessing function that fit, eval and the worker share.

Training and serving must see identical pixels: a different resize filter or crop between ``fit``
and the worker shifts every score. So there is exactly one ``preprocess``: crop to the line's
region of interest, resize to the model's square input with PIL's antialiased bilinear filter,
scale to [0, 1], normalise with the teacher's mean/std.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = ["Roi", "load_image", "preprocess", "to_rgb"]

Roi = tuple[int, int, int, int]  # x, y, width, height in pixels of the received image


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode: 16/32-bit and float gray are rescaled, not clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    elif img.mode == "F":
        arr = np.asarray(img).astype(np.float64)
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        img = Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB") if img.mode != "RGB" else img


def load_image(source: Path | str | bytes | Image.Image) -> Image.Image:
    """Decode an image file or bytes to 8-bit RGB, honouring EXIF orientation."""
    if isinstance(source, Image.Image):
        img = source
    elif isinstance(source, bytes | bytearray | memoryview):
        img = Image.open(io.BytesIO(bytes(source)))
    else:
        img = Image.open(Path(source))
    img.load()
    img = ImageOps.exif_transpose(img) or img
    return to_rgb(img)


def _check_roi(roi: Sequence[int], width: int, height: int) -> Roi:
    x, y, w, h = (int(v) for v in roi)
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError(f"region of interest {(x, y, w, h)} does not fit a {width}x{height} image")
    return x, y, w, h


def preprocess(
    img: Image.Image,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    roi: Sequence[int] | None = None,
) -> torch.Tensor:
    """``Tensor[3, size, size]`` float32, normalised, from an RGB PIL image.

    Args:
        img: an image from ``load_image`` (other modes are converted).
        size: the model's square input side.
        mean, std: the teacher's normalisation (``Teacher.mean``/``.std``, stored in the artifact).
        roi: (x, y, width, height) crop box in the image's pixels; None = the whole image.
    """
    img = to_rgb(img)
    if roi is not None:
        x, y, w, h = _check_roi(roi, img.width, img.height)
        img = img.crop((x, y, x + w, y + h))
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    t = torch.from_numpy(arr.transpose(2, 0, 1).copy())
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (t - m) / s

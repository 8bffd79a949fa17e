"""Image loading and the one preprocessing function that fit, eval and the worker share.

Training and serving must see identical pixels: a different resize filter or crop between ``fit``
and the worker shifts every score. So there is exactly one ``preprocess``: crop to the line's
region of interest, resize to the model's square input with PIL's antialiased bilinear filter,
scale to [0, 1], normalise with the teacher's mean/std.

Camera frames are far larger than the model's input (a 2448x2048 frame for a 256 px model), and
decoding every pixel only to throw most away costs more than the model on a CPU. So
``load_for_model`` decodes a JPEG at 1/2, 1/4 or 1/8 of its size straight from the DCT (libjpeg's
scaled decode, Pillow's ``Image.draft``): the smallest scale at which the region of interest
still has ``DRAFT_MARGIN`` (2) times the model's input side in pixels. Why not 1x: a scaled IDCT
is a box filter over 8x8 blocks, not the antialiased bilinear filter a full decode is resized
with; when it does most of the reduction, the pixels differ enough to move a weak line's image
AUROC by 0.017 (120 images); with the bilinear resize still doing a 2x or larger reduction the
difference is gone (the same idea as Pillow's ``reducing_gap=2``; model/README.md, "Reduced
decode"). The region of interest is in received,
EXIF-oriented pixels; the reduced image is mapped back to those coordinates exactly (a scaled
JPEG's last row and column cover less than a full step, which matters on axes the EXIF
orientation flips). PNG, BMP and TIFF have no such reduced decode (PNG's interlacing gives
previews only for interlaced files, and Pillow exposes none of it): they decode in full. Scores
from a reduced decode match a full decode within the parity rule of MEMKD.md §6
(model/README.md, "Reduced decode").
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, JpegImagePlugin

__all__ = [
    "DRAFT_MARGIN",
    "Roi",
    "ScaledImage",
    "draft_reduction",
    "load_for_model",
    "load_image",
    "oriented_size",
    "preprocess",
    "to_rgb",
]

Roi = tuple[int, int, int, int]  # x, y, width, height in pixels of the received image

_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> (displayed axes swapped, displayed x runs against its raw axis, displayed y
# runs against its raw axis): what ImageOps.exif_transpose does, as coordinates.
_ORIENTATIONS = {
    1: (False, False, False),
    2: (False, True, False),  # mirrored left-right
    3: (False, True, True),  # rotated 180
    4: (False, False, True),  # mirrored top-bottom
    5: (True, False, False),  # transposed
    6: (True, True, False),  # rotated 90 clockwise to display
    7: (True, True, True),  # transversed
    8: (True, False, True),  # rotated 90 counter-clockwise to display
}
_REDUCTIONS = (8, 4, 2, 1)  # what libjpeg's scaled decode offers
DRAFT_MARGIN = 2  # a reduced decode keeps this many times the pixels the model needs


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


def _open(source: Path | str | bytes | Image.Image) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, bytes | bytearray | memoryview):
        return Image.open(io.BytesIO(bytes(source)))
    return Image.open(Path(source))


def load_image(source: Path | str | bytes | Image.Image) -> Image.Image:
    """Decode an image file or bytes in full to 8-bit RGB, honouring EXIF orientation."""
    img = _open(source)
    img.load()
    img = ImageOps.exif_transpose(img) or img
    return to_rgb(img)


def _orientation(img: Image.Image) -> int:
    value = img.getexif().get(_EXIF_ORIENTATION, 1)
    return value if value in _ORIENTATIONS else 1  # exif_transpose ignores other values too


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) after EXIF orientation, from the header (nothing is decoded): the
    coordinates a line's region of interest is given in."""
    swapped = _ORIENTATIONS[_orientation(img)][0]
    return (img.height, img.width) if swapped else img.size


@dataclass(frozen=True)
class ScaledImage:
    """An EXIF-oriented 8-bit RGB image decoded at 1/``reduction`` of its received ``size``.

    Attributes:
        image: the decoded pixels.
        size: (width, height) as received, after EXIF orientation: the ROI's coordinates.
        reduction: 1 (full decode), 2, 4 or 8 (JPEG draft).
        offset: (x, y) in ``image`` pixels where received pixel 0 starts. Non-zero only on an
            axis that EXIF orientation flips, where the partial last step of the reduced decode
            comes first.
    """

    image: Image.Image
    size: tuple[int, int]
    reduction: int = 1
    offset: tuple[float, float] = (0.0, 0.0)

    def box(self, roi: Roi) -> tuple[float, float, float, float]:
        """``roi`` (received pixels) as a (left, top, right, bottom) box in ``image`` pixels."""
        x, y, w, h = roi
        r, (ox, oy) = self.reduction, self.offset
        return (x / r + ox, y / r + oy, (x + w) / r + ox, (y + h) / r + oy)


def draft_reduction(
    region: tuple[int, int], pixels: int, span: int | None = None, margin: int = DRAFT_MARGIN
) -> int:
    """The largest JPEG draft reduction (8, 4, 2 or 1) that still leaves ``margin`` x ``pixels``
    decoded pixels across ``span`` received ones.

    Args:
        region: (width, height) of the region of interest, in received pixels.
        pixels: the decoded pixels needed across ``span``: the model's input side.
        span: received pixels that ``pixels`` must cover; None = the region's shorter side
            (the whole region is resized to the model's square input). The hook for a tiled
            line: it passes its tile side, so that every tile keeps the model's resolution.
        margin: how many times ``pixels`` the decode keeps (1: just enough; see the module).
    """
    across = min(region) if span is None else span
    return next(r for r in _REDUCTIONS if r == 1 or across / r >= margin * pixels)


def load_for_model(
    source: Path | str | bytes | Image.Image,
    size: int,
    roi: Sequence[int] | None = None,
    *,
    span: int | None = None,
    margin: int = DRAFT_MARGIN,
    reduce: bool = True,
) -> ScaledImage:
    """Decode an image with no more pixels than a model of input ``size`` needs of its ``roi``.

    A JPEG is decoded at the reduction ``draft_reduction`` gives (``span``: its tiling hook;
    ``margin``: the pixels kept beyond the model's input);
    every other format, or ``reduce=False``, in full. ``source`` may be an image Pillow has
    opened but not loaded (the worker checks the header first).

    Raises:
        ValueError: ``roi`` does not fit the image.
        Whatever Pillow raises for a broken or truncated file.
    """
    img = _open(source)
    full = oriented_size(img)
    box = _check_roi(roi, *full) if roi is not None else (0, 0, *full)
    reduction = draft_reduction((box[2], box[3]), size, span, margin) if reduce else 1
    offset = (0.0, 0.0)
    if reduction > 1 and isinstance(img, JpegImagePlugin.JpegImageFile):
        raw_w, raw_h = img.size
        drafted = img.draft(None, (raw_w // reduction, raw_h // reduction))
        if drafted is None:  # already loaded or drafted: what is there is what we get
            reduction = 1
        else:
            reduction = round(raw_w / drafted[1][2])
            # ceil(raw / r) decoded pixels cover raw / r steps: the last one only in part
            pad_x = math.ceil(raw_w / reduction) - raw_w / reduction
            pad_y = math.ceil(raw_h / reduction) - raw_h / reduction
            swapped, flip_x, flip_y = _ORIENTATIONS[_orientation(img)]
            pad_x, pad_y = (pad_y, pad_x) if swapped else (pad_x, pad_y)
            offset = (pad_x if flip_x else 0.0, pad_y if flip_y else 0.0)
    else:
        reduction = 1
    img.load()
    oriented = ImageOps.exif_transpose(img) or img
    return ScaledImage(to_rgb(oriented), full, reduction, offset)


def _check_roi(roi: Sequence[int], width: int, height: int) -> Roi:
    x, y, w, h = (int(v) for v in roi)
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError(f"region of interest {(x, y, w, h)} does not fit a {width}x{height} image")
    return x, y, w, h


def _resize_box(img: Image.Image, box: tuple[float, float, float, float], size: int) -> Image.Image:
    """Resize the sub-pixel ``box`` of ``img`` to size x size, sampling only the pixels the box
    touches (as a full decode's integer crop samples only the region's pixels)."""
    left, top = math.floor(box[0]), math.floor(box[1])
    right, bottom = min(math.ceil(box[2]), img.width), min(math.ceil(box[3]), img.height)
    crop = img.crop((left, top, right, bottom))
    inner = (
        box[0] - left,
        box[1] - top,
        min(box[2] - left, crop.width),
        min(box[3] - top, crop.height),
    )
    return crop.resize((size, size), Image.Resampling.BILINEAR, box=inner)


def preprocess(
    img: Image.Image | ScaledImage,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    roi: Sequence[int] | None = None,
) -> torch.Tensor:
    """``Tensor[3, size, size]`` float32, normalised, from an RGB PIL image.

    Args:
        img: an image from ``load_for_model`` (the ROI is mapped onto a reduced decode) or
            ``load_image`` (other modes are converted).
        size: the model's square input side.
        mean, std: the teacher's normalisation (``Teacher.mean``/``.std``, stored in the artifact).
        roi: (x, y, width, height) crop box in the received image's pixels; None = all of it.
    """
    if isinstance(img, ScaledImage) and img.reduction > 1:
        box = _check_roi(roi, *img.size) if roi is not None else (0, 0, *img.size)
        pixels = _resize_box(to_rgb(img.image), img.box(box), size)
    else:
        pixels = to_rgb(img.image if isinstance(img, ScaledImage) else img)
        if roi is not None:
            x, y, w, h = _check_roi(roi, pixels.width, pixels.height)
            pixels = pixels.crop((x, y, x + w, y + h))
        if pixels.size != (size, size):
            pixels = pixels.resize((size, size), Image.Resampling.BILINEAR)
    # numpy, not torch: torch would run these element-wise ops on its intra-op thread pool, and
    # from the worker's decode threads that means more OpenMP teams spinning on the cores the
    # model's forward needs (3.6 ms instead of 0.9 per image here). Same float32 operations in
    # the same order: the values are identical to torch's.
    arr = np.asarray(pixels, dtype=np.float32)
    arr /= np.float32(255.0)
    arr -= np.asarray(mean, dtype=np.float32)
    arr /= np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

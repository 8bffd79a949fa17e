"""Image decoding for the worker: untrusted camera bytes in, the model's input tensor out.

A request value is whatever the camera wrote (JPEG, PNG, BMP or TIFF; gray or colour; 8 or 16 bit;
maybe an EXIF orientation). Decoding is guarded before any pixel is decompressed: Pillow opens
lazily, so the pixel count is checked from the header and an oversized image is refused as
``image-too-large`` without allocating it (a decompression bomb costs a header parse). The
decode itself (a JPEG at the reduced scale the model's input needs, everything else in full), the
conversion to RGB, the region-of-interest crop, the resize and the normalisation are
``memkd.preprocess``'s — the one path ``fit``, ``eval`` and the worker share — so a streamed
image scores exactly as the library scores the same file. The region of interest is checked
against the header's (EXIF-oriented) size, before any pixel is decoded.

``ImageDecoder.decode`` is thread-safe (no shared mutable state); the worker calls it from a small
thread pool. ``encode_mask_png`` renders result masks (fast, low compression: masks are small).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from memkd.preprocess import load_for_model, oriented_size, preprocess
from memkd.tiling import TileGrid, Tiling, cut_tiles
from PIL import Image, UnidentifiedImageError

from memkd_stream.contract.codes import DeadLetterCode
from memkd_stream.contract.formats import IMAGE_FORMATS
from memkd_stream.errors import MemkdStreamError

__all__ = ["DecodeFailed", "DecodedImage", "ImageDecoder", "encode_mask_png"]

Roi = tuple[int, int, int, int]


class DecodeFailed(MemkdStreamError):
    """An image that cannot become a model input; ``code`` is ``decode-error`` or
    ``image-too-large`` (its ``DeadLetterCode``)."""

    code: str = DeadLetterCode.DECODE_ERROR


def _too_large(detail: str) -> DecodeFailed:
    return DecodeFailed(detail, code=DeadLetterCode.IMAGE_TOO_LARGE)


@dataclass(frozen=True)
class DecodedImage:
    """The model input ``tensor`` (float32 [3, size, size]; a tiled line's: [N, 3, size, size],
    one per tile of ``grid``) and the received image size (after EXIF orientation, i.e. in the
    coordinates the line's region of interest uses)."""

    tensor: torch.Tensor
    height: int
    width: int
    grid: TileGrid | None = None


def _check_roi(roi: Sequence[int] | None, width: int, height: int) -> Roi | None:
    if roi is None:
        return None
    x, y, w, h = (int(v) for v in roi)
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise DecodeFailed(
            f"the line's region of interest (x={x}, y={y}, w={w}, h={h}) does not fit in the "
            f"{width}x{height} image; send images of the size the line was trained on or "
            "re-fit the line with a matching --roi",
        )
    return (x, y, w, h)


class ImageDecoder:
    """Decodes request values with a pixel-count limit checked from the image header.

    Pillow has its own decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``, process-wide); when it
    is below ``max_pixels`` it is raised to ``max_pixels`` so that this decoder's limit governs.
    Either guard firing is reported as ``image-too-large``.
    """

    def __init__(self, max_pixels: int) -> None:
        if max_pixels <= 0:
            raise ValueError("max_pixels must be positive")
        self.max_pixels = max_pixels
        pillow_limit = Image.MAX_IMAGE_PIXELS
        if pillow_limit is not None and pillow_limit < max_pixels:
            Image.MAX_IMAGE_PIXELS = max_pixels

    def _too_large(self, width: int, height: int) -> DecodeFailed:
        return _too_large(
            f"image is {width}x{height} = {width * height} pixels; the limit is "
            f"{self.max_pixels} (setting worker.max_image_pixels)",
        )

    def _bomb(self, exc: Exception) -> DecodeFailed:
        return _too_large(
            f"image has more pixels than the limit of {self.max_pixels} (setting "
            f"worker.max_image_pixels); Pillow: {exc}",
        )

    def decode(
        self,
        value: bytes,
        *,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        roi: Sequence[int] | None = None,
        tiling: Tiling | None = None,
    ) -> DecodedImage:
        """Decode ``value`` and preprocess it for a model of input ``size`` (a tiled line's:
        cut into its tiles, ``memkd.tiling.cut_tiles``).

        Raises:
            DecodeFailed: ``image-too-large`` when the header declares more than ``max_pixels``;
                ``decode-error`` for empty, corrupt, truncated or unsupported data, or an ROI
                that does not fit the image.
        """
        if not value:
            raise DecodeFailed("the image is empty (zero bytes)")
        try:
            image = Image.open(io.BytesIO(value))  # lazy: parses the header only
        except Image.DecompressionBombError as exc:
            raise self._bomb(exc) from None
        except UnidentifiedImageError:
            raise DecodeFailed("not a recognised image (expected JPEG, PNG, BMP or TIFF)") from None
        except Exception as exc:  # Pillow raises many types for a damaged header
            raise DecodeFailed(f"unreadable image header: {exc}") from None
        with image:
            image_format = image.format
            width, height = image.size
            if image_format not in IMAGE_FORMATS:
                raise DecodeFailed(
                    f"image format {image_format} is not one of JPEG, PNG, BMP, TIFF",
                )
            if width <= 0 or height <= 0:
                raise DecodeFailed(f"image header declares a {width}x{height} image")
            if width * height > self.max_pixels:
                raise self._too_large(width, height)
            try:
                out_width, out_height = oriented_size(image)
            except Exception as exc:  # a damaged EXIF block
                raise DecodeFailed(f"unreadable {image_format} metadata: {exc}") from None
            box = _check_roi(roi, out_width, out_height)
            try:
                # decode (reduced where the model needs fewer pixels), EXIF orientation,
                # 16-bit/gray -> 8-bit RGB
                # (a tiled line: in full for now; load_for_model's span is the hook for tiles)
                scaled = load_for_model(image, size, box, reduce=tiling is None)
            except Image.DecompressionBombError as exc:
                raise self._bomb(exc) from None
            except MemoryError:
                raise self._too_large(width, height) from None
            except Exception as exc:  # corrupt data surfaces as many types; all are the sender's
                raise DecodeFailed(f"corrupt or truncated {image_format} image: {exc}") from None

        grid = None
        try:
            if tiling is None:
                tensor = preprocess(scaled, size, mean, std, box)
            else:
                tensor, grid = cut_tiles(scaled.image, tiling, size, mean, std, box)
        except Exception as exc:
            raise DecodeFailed(f"image could not be preprocessed: {exc}") from None
        return DecodedImage(tensor=tensor, height=out_height, width=out_width, grid=grid)


def encode_mask_png(mask_u8: np.ndarray) -> bytes:
    """Encode an 8-bit gray mask (H x W uint8) as PNG, favouring speed over size."""
    mask = np.asarray(mask_u8)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"mask must be a 2-D uint8 array, got {mask.dtype} {mask.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()

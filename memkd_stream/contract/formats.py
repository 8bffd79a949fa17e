"""The image formats a request value may hold (DESIGN.md §3): the one list that the worker
decodes, and that ``fit``, ``eval`` and ``produce`` read from folders, so that a line is never
trained on a format its worker would dead-letter."""

from __future__ import annotations

__all__ = ["IMAGE_FORMATS", "IMAGE_SUFFIXES"]

# Pillow's format names. MPO is how Pillow names a JPEG that carries a second (preview) picture,
# which many cameras write.
IMAGE_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "TIFF"})
# File name suffixes of those formats (lower case).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})

"""A synthetic anomaly-detection dataset in the MVTec AD layout, made from scikit-image's photos.

No public anomaly-detection dataset is installable here (MEMKD.md §8), but scikit-image ships real
CC0 photographs offline. Each category takes one photo: good images are different views of it
(crop position, scale, a small rotation, lighting, sensor noise), defective images carry one
synthetic defect each (``memkd.datasets.defects``) with its exact mask. Textures are viewed
anywhere on the photo; the object (the coffee cup) stays put with small pose jitter, as MVTec AD's
objects do.

Every image draws from its own random stream, seeded from (seed, category, split, index), so the
same seed gives byte-identical files whatever else is generated.
"""

from __future__ import annotations

import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from memkd.datasets.defects import Scene, paint_defect
from memkd.datasets.mvtec import DatasetError

__all__ = ["SYNTH_CATEGORIES", "synth_dataset", "synth_image"]


@dataclass(frozen=True)
class _Spec:
    """How to view one photo, which defects it gets and, for objects, where its parts are.

    Coordinates are source-photo pixels (y, x). ``crop`` is the width of source seen across the
    output image; ``centre`` None means a texture, viewed anywhere.
    """

    source: str
    kinds: tuple[str, ...]
    crop: float
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    centre: tuple[float, float] | None = None
    shift: float = 0.0
    scale_jitter: float = 0.1
    angle: float = 4.0
    flip: bool = True
    part_ellipse: tuple[float, float, float, float] | None = None  # cy, cx, semi-axis y, x
    part_edge_below: float = 0.0  # the part's edge is visible (not behind the cup) below this y
    background_box: tuple[int, int, int, int] | None = None  # y0, y1, x0, x1: only background


_TEXTURE_KINDS = ("scratch", "crack", "hole", "stain", "foreign", "color")
_SPECS: dict[str, _Spec] = {
    "brick": _Spec("brick", _TEXTURE_KINDS, crop=300, tint=(1.08, 0.95, 0.85)),
    "grass": _Spec("grass", _TEXTURE_KINDS, crop=300, tint=(0.92, 1.05, 0.86)),
    "gravel": _Spec("gravel", _TEXTURE_KINDS, crop=300, tint=(1.02, 1.0, 0.96)),
    "coffee": _Spec(
        "coffee",
        ("scratch", "crack", "stain", "missing", "extra"),
        crop=390,
        centre=(205, 278),
        shift=6,
        scale_jitter=0.03,
        angle=3.0,
        flip=False,
        part_ellipse=(230, 277, 160, 203),  # the saucer
        part_edge_below=215,
        background_box=(110, 390, 488, 600),  # table to the right of the saucer
    ),
}
SYNTH_CATEGORIES: tuple[str, ...] = tuple(_SPECS)
_FOREIGN_SOURCES = ("brick", "grass", "gravel", "coffee", "rocket", "chelsea", "astronaut")
_PAD = 32  # reflected border so that a jittered object view never samples outside the photo
_SPLIT_CODES = {"train": 0, "test_good": 1, "test_bad": 2}


def synth_dataset(
    out: Path | str,
    categories: tuple[str, ...] | list[str] = SYNTH_CATEGORIES,
    seed: int = 0,
    n_train: int = 60,
    n_test_good: int = 12,
    n_test_bad: int = 24,
    size: int = 256,
    overwrite: bool = False,
) -> list[Path]:
    """Write an MVTec-layout dataset under ``out``; return the category folders.

    Layout: ``<cat>/train/good/000.png``, ``<cat>/test/good/000.png``,
    ``<cat>/test/<defect>/000.png`` and ``<cat>/ground_truth/<defect>/000_mask.png`` (0/255).
    Defective images cycle through the category's defect kinds. An existing category folder is
    replaced only with ``overwrite=True``.
    """
    unknown = [c for c in categories if c not in _SPECS]
    if unknown:
        raise DatasetError(
            f"Unknown synthetic categories {unknown}; choose from {list(SYNTH_CATEGORIES)}.",
            code="dataset-unknown-category",
        )
    if size < 64 or min(n_train, n_test_good, n_test_bad) < 0:
        raise ValueError("size must be at least 64 and image counts non-negative")
    out = Path(out)
    roots = []
    for name in categories:
        root = out / name
        if root.exists():
            if not overwrite:
                raise DatasetError(
                    f"{root} already exists; choose another folder or pass overwrite.",
                    code="dataset-exists",
                )
            shutil.rmtree(root)
        _write_category(root, name, seed, n_train, n_test_good, n_test_bad, size)
        roots.append(root)
    return roots


def synth_image(
    name: str, seed: int, split: str, index: int, size: int = 256
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str]:
    """One generated image, before noise and 8-bit rounding: (image, clean, mask, defect kind).

    ``clean`` is the same view and lighting without the defect (for checking masks); for good
    images it equals ``image`` and ``mask`` is None.
    """
    spec = _SPECS[name]
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), _SPLIT_CODES[split], index])
    view, affine, flip = _render_view(spec, size, rng)
    image, mask, kind = view, None, "good"
    if split == "test_bad":
        kind = spec.kinds[index % len(spec.kinds)]
        image, mask = paint_defect(kind, view, rng, _scene(spec, size, affine, flip))
    light = _lighting(size, rng)
    return light(image), light(view), mask, kind


def _write_category(
    root: Path, name: str, seed: int, n_train: int, n_good: int, n_bad: int, size: int
) -> None:
    n_kinds = len(_SPECS[name].kinds)
    for split, count in (("train", n_train), ("test_good", n_good), ("test_bad", n_bad)):
        for index in range(count):
            image, _, mask, kind = synth_image(name, seed, split, index, size)
            noise_rng = np.random.default_rng(
                [seed, zlib.crc32(name.encode()), _SPLIT_CODES[split], index, 1]
            )
            noise = noise_rng.standard_normal(image.shape, dtype=np.float32)
            image += noise * np.float32(noise_rng.uniform(0.002, 0.008))
            pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
            folder = "train" if split == "train" else "test"
            stem = f"{index:03d}" if mask is None else f"{index // n_kinds:03d}"
            _save_png(root / folder / kind / f"{stem}.png", pixels)
            if mask is not None:
                _save_png(root / "ground_truth" / kind / f"{stem}_mask.png", mask * np.uint8(255))


def _save_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Level 1: noisy photos barely compress better at higher levels, and take 5x longer.
    Image.fromarray(pixels).save(path, format="PNG", compress_level=1)


_Affine = tuple[float, float, float, float, float, float]


def _render_view(
    spec: _Spec, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, _Affine, bool]:
    """A random view of the category's photo as float RGB in 0..1, its affine map and flip."""
    photo = _padded_photo(spec.source, spec.tint)
    crop = spec.crop * rng.uniform(1 - spec.scale_jitter, 1 + spec.scale_jitter)
    angle = np.deg2rad(rng.uniform(-spec.angle, spec.angle))
    scale = crop / size  # source pixels per output pixel
    cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
    if spec.centre is None:
        h, w = photo.height - 2 * _PAD, photo.width - 2 * _PAD
        half = crop / 2 * (abs(np.cos(angle)) + abs(np.sin(angle))) + 1
        cy, cx = rng.uniform(half, h - half), rng.uniform(half, w - half)
    else:
        cy, cx = (c + rng.uniform(-spec.shift, spec.shift) for c in spec.centre)
    mid = size / 2
    # Output pixel (x, y) samples the padded source at (a x + b y + c, d x + e y + f).
    a, b, d, e = cos, -sin, sin, cos
    affine = (a, b, cx + _PAD - a * mid - b * mid, d, e, cy + _PAD - d * mid - e * mid)
    view = photo.transform((size, size), Image.Transform.AFFINE, affine, Image.Resampling.BICUBIC)
    image = np.asarray(view, dtype=np.float32) / 255
    flip = spec.flip and bool(rng.random() < 0.5)
    if flip:
        image = image[:, ::-1].copy()
    return image, affine, flip


def _scene(spec: _Spec, size: int, affine: _Affine, flip: bool) -> Scene:
    """Where defects may go in this view, and what a painter may paste."""
    foreign = [_photo(n) for n in _FOREIGN_SOURCES if n != spec.source]
    if spec.part_ellipse is None:
        return Scene(allowed=np.ones((size, size), dtype=bool), foreign=foreign)
    # One bilinear warp of the part's three source-space maps: coverage, inner, breakable edge.
    maps = _padded_part_maps(spec).transform(
        (size, size), Image.Transform.AFFINE, affine, Image.Resampling.BILINEAR
    )
    packed = np.asarray(maps)
    if flip:
        packed = packed[:, ::-1]
    return Scene(
        allowed=packed[..., 1] >= 128,
        part=packed[..., 0].astype(np.float32) / 255,
        part_edge=packed[..., 2] >= 128,
        background=_background_plate(spec, size),
        foreign=foreign,
    )


def _lighting(size: int, rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
    """A random global illumination (gain, gamma, a gentle gradient, white balance)."""
    gain = rng.uniform(0.9, 1.1)
    gamma = rng.uniform(0.88, 1.12)
    direction = rng.uniform(0, 2 * np.pi)
    amplitude = rng.uniform(0, 0.06)
    balance = rng.uniform(0.97, 1.03, 3).astype(np.float32)
    yy, xx = _unit_grid(size)
    field = 1 + 2 * amplitude * (np.cos(direction) * xx + np.sin(direction) * yy)
    scale = (gain * field[..., None] * balance).astype(np.float32)

    def light(image: np.ndarray) -> np.ndarray:
        return np.clip(np.clip(image, 0, 1) ** gamma * scale, 0, 1).astype(np.float32)

    return light


@lru_cache(maxsize=4)
def _unit_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    return yy, xx


@lru_cache(maxsize=16)
def _photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as float RGB in 0..1 (grey photos replicated)."""
    from skimage import data

    pixels = getattr(data, name)()
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    return np.ascontiguousarray(pixels[..., :3], dtype=np.float32) / 255


@lru_cache(maxsize=4)
def _padded_part_maps(spec: _Spec) -> Image.Image:
    """An object's part maps in source pixels, packed as RGB and padded like the photo.

    R: the part (for the coffee photo the saucer and cup body, found by their red hue:
    green/red < 0.42 where the wooden table is above 0.5, joined with a hand-fitted ellipse of the
    saucer where shadows break the colour rule, then smoothed). G: the part at least 8 output
    pixels from its edge (where defects are centred). B: its visible edge (below
    ``part_edge_below``), about 2 output pixels wide (where pieces break off).
    """
    photo = _photo(spec.source)
    red, green = photo[..., 0], photo[..., 1]
    hue_part = ndimage.binary_opening((green < 0.42 * red) & (red > 0.2), iterations=2)
    labels, n = ndimage.label(hue_part)
    if n:
        sizes = ndimage.sum(hue_part, labels, range(1, n + 1))
        hue_part = labels == int(np.argmax(sizes)) + 1
    ey, ex, ry, rx = spec.part_ellipse or (0, 0, 1, 1)
    yy, xx = np.mgrid[0 : photo.shape[0], 0 : photo.shape[1]]
    ellipse = ((yy - ey) / ry) ** 2 + ((xx - ex) / rx) ** 2 <= 0.97**2
    solid = ndimage.binary_fill_holes(hue_part | ellipse)
    solid = ndimage.gaussian_filter(solid.astype(np.float32), 2.0) >= 0.5
    inside = ndimage.distance_transform_edt(solid)
    per_output_pixel = spec.crop / 256
    inner = inside > 8 * per_output_pixel
    edge = solid & (inside <= 2 * per_output_pixel) & (yy > spec.part_edge_below)
    packed = np.stack([solid, inner, edge], axis=-1).astype(np.uint8) * 255
    return Image.fromarray(np.pad(packed, ((_PAD, _PAD), (_PAD, _PAD), (0, 0)), mode="reflect"))


@lru_cache(maxsize=8)
def _background_plate(spec: _Spec, size: int) -> np.ndarray:
    """What lies behind an object's part (``background_box`` of the photo) at output scale."""
    y0, y1, x0, x1 = spec.background_box or (0, 1, 0, 1)
    scale = spec.crop / size
    plate = Image.fromarray(np.round(_photo(spec.source)[y0:y1, x0:x1] * 255).astype(np.uint8))
    plate = plate.resize(
        (round((x1 - x0) / scale), round((y1 - y0) / scale)), Image.Resampling.LANCZOS
    )
    return np.asarray(plate, dtype=np.float32) / 255


@lru_cache(maxsize=8)
def _padded_photo(name: str, tint: tuple[float, float, float]) -> Image.Image:
    tinted = np.clip(_photo(name) * np.array(tint, dtype=np.float32), 0, 1)
    padded = np.pad(tinted, ((_PAD, _PAD), (_PAD, _PAD), (0, 0)), mode="reflect")
    return Image.fromarray(np.round(padded * 255).astype(np.uint8))

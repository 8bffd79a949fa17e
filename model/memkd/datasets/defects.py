"""Synthetic defects painted onto a photo, each returning exactly the region it changed.

Every painter draws a defect as a *coverage* map (0..1, antialiased geometry) and an *appearance*
(what a fully covered pixel looks like); the image becomes ``image + (appearance - image) *
coverage``. The ground-truth mask is ``coverage >= MASK_COVERAGE``: pixels at least a quarter
covered, so the mask is the changed region up to its antialiased rim (outside it a pixel moves by
less than a quarter of the defect's contrast). Sizes are given for a 256-pixel image and scale with
the image; a defect whose mask would be too small to see at that size (under 60 pixels), or too
faint (mean change inside the mask under 0.06), is drawn again.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = ["DEFECT_KINDS", "MASK_COVERAGE", "Scene", "paint_defect"]

MASK_COVERAGE = 0.25
_MIN_MASK_PIXELS_AT_256 = 60
_MIN_CONTRAST = 0.06  # mean change inside the mask (0..1, largest channel): a visible defect
_ATTEMPTS = 20

_STAIN_COLOURS = (
    (0.55, 0.36, 0.20),  # coffee
    (0.70, 0.33, 0.16),  # rust
    (0.32, 0.30, 0.26),  # oil
    (0.35, 0.45, 0.85),  # ink
    (0.55, 0.75, 0.30),  # coolant
)


@dataclass(frozen=True)
class Scene:
    """What a painter may use besides the image.

    Attributes:
        allowed: bool H x W, where a defect may be centred (the object, or the whole texture).
        part: float coverage H x W of a part that can break (``missing``), or None.
        part_edge: bool H x W, the visible edge of that part where a piece may break off.
        background: float RGB plate of what lies behind the part, at image scale.
        foreign: other photos (float RGB in 0..1) to paste from (``foreign``).
    """

    allowed: np.ndarray
    part: np.ndarray | None = None
    part_edge: np.ndarray | None = None
    background: np.ndarray | None = None
    foreign: Sequence[np.ndarray] = ()


Painter = Callable[[np.ndarray, np.random.Generator, Scene, float], tuple[np.ndarray, np.ndarray]]


def paint_defect(
    kind: str, image: np.ndarray, rng: np.random.Generator, scene: Scene
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one defect of ``kind`` on a float RGB image; return (new image, bool mask)."""
    painter = _PAINTERS[kind]
    scale = image.shape[0] / 256
    min_pixels = _MIN_MASK_PIXELS_AT_256 * scale * scale
    for _ in range(_ATTEMPTS):
        appearance, coverage = painter(image, rng, scene, scale)
        mask = coverage >= MASK_COVERAGE
        if mask.sum() < min_pixels:
            continue
        out = np.clip(image + (appearance - image) * coverage[..., None], 0.0, 1.0)
        if np.abs(out - image)[mask].max(axis=-1).mean() >= _MIN_CONTRAST:
            return out.astype(np.float32), mask
    raise RuntimeError(f"could not place a visible {kind} defect in {_ATTEMPTS} attempts")


# --- geometry ------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    return yy, xx


def _pick_centre(
    rng: np.random.Generator, allowed: np.ndarray, margin: float
) -> tuple[float, float]:
    """A random allowed pixel at least ``margin`` pixels from the border."""
    h, w = allowed.shape
    m = int(np.ceil(margin))
    inner = np.zeros_like(allowed)
    inner[m : h - m, m : w - m] = allowed[m : h - m, m : w - m]
    choices = np.flatnonzero(inner)
    if choices.size == 0:
        choices = np.flatnonzero(allowed)
    if choices.size == 0:  # nowhere allowed in this view: anywhere rather than fail
        choices = np.arange(h * w)
    y, x = divmod(int(choices[rng.integers(choices.size)]), w)
    return float(y), float(x)


def _blob(
    shape: tuple[int, int],
    centre: tuple[float, float],
    radius: float,
    rng: np.random.Generator,
    irregularity: float,
    softness: float,
) -> np.ndarray:
    """Coverage of an irregular blob: a circle whose radius wobbles with a few low harmonics."""
    yy, xx = _grid(*shape)
    dy, dx = yy - centre[0], xx - centre[1]
    rho = np.hypot(dy, dx)
    theta = np.arctan2(dy, dx)
    wobble = np.ones_like(rho)
    for k in range(2, 6):
        wobble += rng.uniform(0, irregularity) / k * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
    edge = radius * wobble
    return np.clip((edge - rho) / softness + 0.5, 0.0, 1.0)


def _stroke(shape: tuple[int, int], points: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Antialiased coverage of a polyline (N x 2 points as y, x) with a width per point."""
    h, w = shape
    cover = np.zeros(shape, dtype=np.float32)
    pad = float(widths.max()) + 2
    y0, x0 = np.maximum(np.floor(points.min(axis=0) - pad).astype(int), 0)
    y1, x1 = np.minimum(np.ceil(points.max(axis=0) + pad).astype(int), (h, w))
    if y1 <= y0 or x1 <= x0:
        return cover
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    pix = np.stack([yy.ravel(), xx.ravel()], axis=1)[:, None, :]  # P x 1 x 2
    a, b = points[:-1][None], points[1:][None]  # 1 x S x 2
    ab = b - a
    t = np.clip(((pix - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-6), 0.0, 1.0)
    dist = np.linalg.norm(pix - (a + t[..., None] * ab), axis=-1)
    half = 0.5 * (widths[:-1][None] + t * (widths[1:] - widths[:-1])[None])
    inside = np.clip(0.5 + half - dist, 0.0, 1.0).max(axis=1)
    cover[y0:y1, x0:x1] = inside.reshape(y1 - y0, x1 - x0)
    return cover


def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, p3: np.ndarray, n: int) -> np.ndarray:
    t = np.linspace(0, 1, n, dtype=np.float32)[:, None]
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3


def _walk(
    rng: np.random.Generator, start: np.ndarray, angle: float, steps: int, step: float
) -> np.ndarray:
    """A persistent random walk: the direction drifts a little at every step."""
    turns = np.cumsum(rng.normal(0, 0.22, steps))
    directions = np.stack([np.sin(angle + turns), np.cos(angle + turns)], axis=1)
    return np.vstack([start, start + np.cumsum(directions * step, axis=0)]).astype(np.float32)


def _luminance(image: np.ndarray) -> np.ndarray:
    return image @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


# --- painters ------------------------------------------------------------------------------------


def _scratch(
    image: np.ndarray, rng: np.random.Generator, scene: Scene, s: float
) -> tuple[np.ndarray, np.ndarray]:
    """A thin curved scratch, bright on dark surfaces and dark on bright ones."""
    length = rng.uniform(50, 130) * s
    centre = np.array(_pick_centre(rng, scene.allowed, 0.3 * length), dtype=np.float32)
    angle = rng.uniform(0, np.pi)
    along = np.array([np.sin(angle), np.cos(angle)], dtype=np.float32)
    across = np.array([along[1], -along[0]], dtype=np.float32)
    p0, p3 = centre - along * length / 2, centre + along * length / 2
    p1 = p0 + (p3 - p0) / 3 + across * rng.normal(0, 0.15 * length)
    p2 = p0 + 2 * (p3 - p0) / 3 + across * rng.normal(0, 0.15 * length)
    points = _bezier(p0, p1, p2, p3, 48)
    t = np.linspace(0, 1, len(points), dtype=np.float32)
    widths = rng.uniform(1.6, 3.0) * s * (0.55 + 0.45 * np.sin(np.pi * t))
    cover = _stroke(image.shape[:2], points, widths)
    local = float(_luminance(image)[cover > 0.5].mean()) if (cover > 0.5).any() else 0.5
    tone = rng.uniform(0.85, 1.0) if local < 0.55 else rng.uniform(0.03, 0.15)
    return np.full_like(image, tone), cover


def _crack(
    image: np.ndarray, rng: np.random.Generator, scene: Scene, s: float
) -> tuple[np.ndarray, np.ndarray]:
    """A dark, branching crack that tapers towards its tips."""
    steps = int(rng.integers(40, 80))
    step = 1.6 * s
    centre = np.array(_pick_centre(rng, scene.allowed, 0.5 * steps * step), dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    start = centre - np.array([np.sin(angle), np.cos(angle)]) * steps * step / 2
    main = _walk(rng, start.astype(np.float32), angle, steps, step)
    width = rng.uniform(2.0, 3.2) * s
    cover = _stroke(image.shape[:2], main, width * np.linspace(1.0, 0.45, len(main)))
    for _ in range(int(rng.integers(1, 4))):
        at = int(rng.integers(len(main) // 5, len(main) - 5))
        turn = rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
        branch = _walk(rng, main[at], angle + turn, int(rng.integers(12, 30)), step)
        taper = width * np.linspace(0.7, 0.35, len(branch)) * (1 - 0.4 * at / len(main))
        cover = np.maximum(cover, _stroke(image.shape[:2], branch, taper))
    return image * rng.uniform(0.08, 0.25), cover


def _hole(
    image: np.ndarray, rng: np.random.Generator, scene: Scene, s: float
) -> tuple[np.ndarray, np.ndarray]:
    """A dark pit whose far inner wall catches the light."""
    radius = rng.uniform(7, 15) * s
    cy, cx = _pick_centre(rng, scene.allowed, 1.6 * radius)
    cover = _blob(image.shape[:2], (cy, cx), radius, rng, irregularity=0.25, softness=1.0)
    yy, xx = _grid(*image.shape[:2])
    light = rng.uniform(0, 2 * np.pi)
    facing = ((yy - cy) * np.sin(light) + (xx - cx) * np.cos(light)) / radius
    depth = rng.uniform(0.04, 0.12) + 0.22 * np.clip(facing, 0, 1) ** 2
    tint = np.array([1.0, 0.95, 0.88], dtype=np.float32)
    return (depth[..., None] * tint).astype(np.float32), cover


def _stain(
    image: np.ndarray, rng: np.random.Generator, scene: Scene, s: float
) -> tuple[np.ndarray, np.ndarray]:
    """A soft coloured stain, darker at its dried rim."""
    radius = rng.uniform(10, 24) * s
    cy, cx = _pick_centre(rng, scene.allowed, 1.4 * radius)
    cover = _blob(image.shape[:2], (cy, cx), radius, rng, irregularity=0.35, softness=2.0 * s)
    colour = np.array(_STAIN_COLOURS[rng.integers(len(_STAIN_COLOURS))], dtype=np.float32)
    colour = np.clip(colour * rng.uniform(0.85, 1.15, 3), 0, 1).astype(np.float32)
    yy, xx = _grid(*image.shape[:2])
    rim = np.clip(np.hypot(yy - cy, xx - cx) / radius, 0, 1) ** 4
    opacity = (rng.uniform(0.5, 0.75) * (0.8 + 0.2 * rim))[..., None]
    return image * (1 - opacity) + image * colour * opacity, cover


def _foreign(
    image: np.ndarray, rng: np.random.Generator, scene: Scene, s: float
) -> tuple[np.ndarray, np.ndarray]:
    """A patch of another material (cut from another photo) with an irregular outline."""
    radius = rng.uniform(10, 22) * s
    cy, cx = _pick_centre(rng, scene.allowed, 1.5 * radius)
    cover = _blob(image.shape[:2], (cy, cx), radius, rng, irregularity=0.45, softness=1.0)
    source = scene.foreign[int(rng.integers(len(scene.foreign)))]
    side = int(np.ceil(2 * 1.5 * radius)) + 2
    crop = int(min(side * rng.uniform(1.0, 2.0), *source.shape[:2]))
    y = int(rng.integers(0, source.shape[0] - crop + 1))
    x = int(rng.integers(0, source.shape[1] - crop + 1))
    patch = _resize(source[y : y + crop, x : x + crop], side)
    appearance = image.copy()
    top, left = int(cy) - side // 2, int(cx) - side // 2
    _paste(appearance, patch, top, left)
    return appearance, cover


def _colour_shift(
    image: np.ndarray, rng: np.random.Generator, scene: Scene, s: float
) -> tuple[np.ndarray, np.ndarray]:
    """A discoloured region: same texture, another hue (heat tint, bleaching, contamination)."""
    radius = rng.uniform(12, 26) * s
    cy, cx = _pick_centre(rng, scene.allowed, 1.4 * radius)
    cover = _blob(image.shape[:2], (cy, cx), radius, rng, irregularity=0.3, softness=1.5 * s)
    tint = np.array(colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.45, 0.65), 1.0))
    tint = (tint / float(tint @ np.array([0.299, 0.587, 0.114]))).astype(np.float32)
    return np.clip(image * tint, 0, 1), cover


def _missing(
    image: np.ndarray, rng: np.random.Generator, scene: Scene, s: float
) -> tuple[np.ndarray, np.ndarray]:
    """A piece broken off the edge of a part: the background shows through where it was."""
    if scene.part is None or scene.part_edge is None or scene.background is None:
        raise ValueError("the 'missing' defect needs a scene with a part, its edge and background")
    radius = rng.uniform(10, 18) * s
    cy, cx = _pick_centre(rng, scene.part_edge, radius)
    cover = _blob(image.shape[:2], (cy, cx), radius, rng, irregularity=0.4, softness=1.0)
    cover = cover * scene.part
    side = int(np.ceil(2 * 1.5 * radius)) + 2
    plate = scene.background
    y = int(rng.integers(0, max(plate.shape[0] - side, 0) + 1))
    x = int(rng.integers(0, max(plate.shape[1] - side, 0) + 1))
    patch = plate[y : y + side, x : x + side]
    if patch.shape[:2] != (side, side):
        patch = _resize(patch, side)
    # Match the plate to the background right beside the break (shadow, lighting).
    yy, xx = _grid(*image.shape[:2])
    beside = (scene.part < 0.05) & (np.hypot(yy - cy, xx - cx) < 2.5 * radius)
    if beside.sum() >= 10:
        patch = np.clip(
            patch * (image[beside].mean(0) / np.maximum(patch.mean((0, 1)), 1e-3)), 0, 1
        )
    appearance = image.copy()
    _paste(appearance, patch, int(cy) - side // 2, int(cx) - side // 2)
    return appearance, cover


def _extra(
    image: np.ndarray, rng: np.random.Generator, scene: Scene, s: float
) -> tuple[np.ndarray, np.ndarray]:
    """A small foreign object lying on the part: a coin from scikit-image's coin photo."""
    sprites = _coin_sprites()
    grey, alpha = sprites[rng.integers(len(sprites))]
    side = round(2 * rng.uniform(9, 14) * s)
    cy, cx = _pick_centre(rng, scene.allowed, side)
    grey_s = _resize(grey[..., None].repeat(3, axis=2), side)
    alpha_s = _resize(alpha[..., None].repeat(3, axis=2), side)[..., 0]
    metal = np.array([(1.0, 0.84, 0.55), (0.95, 0.95, 1.0)][rng.integers(2)], dtype=np.float32)
    sprite = np.clip(grey_s * metal * rng.uniform(1.0, 1.3), 0, 1)
    appearance, cover = image.copy(), np.zeros(image.shape[:2], dtype=np.float32)
    top, left = int(cy) - side // 2, int(cx) - side // 2
    _paste(appearance, sprite, top, left)
    _paste(cover, alpha_s, top, left)
    return appearance, cover


# --- helpers for pasting -------------------------------------------------------------------------


def _resize(array: np.ndarray, side: int) -> np.ndarray:
    """Resize a float RGB array in 0..1 to side x side (through 8-bit PIL, antialiased)."""
    img = Image.fromarray(np.round(np.clip(array, 0, 1) * 255).astype(np.uint8))
    return np.asarray(img.resize((side, side), Image.Resampling.LANCZOS), dtype=np.float32) / 255


def _paste(target: np.ndarray, patch: np.ndarray, top: int, left: int) -> None:
    """Copy ``patch`` into ``target`` at (top, left), clipped at the borders."""
    h, w = target.shape[:2]
    ph, pw = patch.shape[:2]
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + ph, h), min(left + pw, w)
    if y1 > y0 and x1 > x0:
        target[y0:y1, x0:x1] = patch[y0 - top : y1 - top, x0 - left : x1 - left]


@lru_cache(maxsize=1)
def _coin_sprites() -> list[tuple[np.ndarray, np.ndarray]]:
    """Cut the coins out of ``skimage.data.coins()``: (grey 0..1, alpha 0..1) square crops."""
    from skimage import data, filters

    coins = data.coins().astype(np.float32) / 255
    smooth = ndimage.gaussian_filter(coins, 1.0)
    solid = ndimage.binary_fill_holes(smooth > filters.threshold_local(smooth, 71, offset=-0.02))
    solid = ndimage.binary_opening(solid, iterations=2)
    labels, _ = ndimage.label(solid)
    sprites = []
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        h, w = box[0].stop - box[0].start, box[1].stop - box[1].start
        if not (28 <= h <= 80 and 28 <= w <= 80 and 0.75 < h / w < 1.33):
            continue
        side = max(h, w)
        cy, cx = (box[0].start + box[0].stop) // 2, (box[1].start + box[1].stop) // 2
        y0, x0 = cy - side // 2, cx - side // 2
        if y0 < 0 or x0 < 0 or y0 + side > coins.shape[0] or x0 + side > coins.shape[1]:
            continue
        window = (slice(y0, y0 + side), slice(x0, x0 + side))
        alpha = ndimage.gaussian_filter((labels[window] == i).astype(np.float32), 0.7)
        sprites.append((coins[window], alpha))
    if not sprites:  # scikit-image changed its photo: fall back to a plain disc
        yy, xx = np.mgrid[-20:20, -20:20]
        disc = np.clip(20 - np.hypot(yy, xx), 0, 1).astype(np.float32)
        sprites.append((0.6 + 0.2 * disc, disc))
    return sprites


_PAINTERS: dict[str, Painter] = {
    "scratch": _scratch,
    "crack": _crack,
    "hole": _hole,
    "stain": _stain,
    "foreign": _foreign,
    "color": _colour_shift,
    "missing": _missing,
    "extra": _extra,
}
DEFECT_KINDS = tuple(_PAINTERS)

"""PNG figures of ``eval``: ROC curves and heatmap overlays, drawn with PIL and numpy only.

No plotting library: the figures are simple, and the service image should not carry matplotlib.
Heatmaps use the wire mask's scale (DESIGN.md §3): clip(map / (2 x threshold), 0, 1), so the
middle of the colour ramp is the line's threshold in every figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["heat_colours", "overlay_panel", "roc_png"]

_WHITE, _BLACK, _GREY = (255, 255, 255), (0, 0, 0), (200, 200, 200)
_CURVE = (31, 119, 180)


def roc_png(
    path: Path,
    fpr: np.ndarray,
    tpr: np.ndarray,
    title: str,
    auroc: float,
    *,
    size: int = 480,
) -> None:
    """A ROC curve with its diagonal, axes, ticks and the AUROC in the title."""
    margin_l, margin_b, margin_t, margin_r = 56, 48, 36, 16
    img = Image.new("RGB", (size, size), _WHITE)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    w, h = size - margin_l - margin_r, size - margin_t - margin_b

    def xy(x: float, y: float) -> tuple[float, float]:
        return margin_l + x * w, margin_t + (1.0 - y) * h

    for tick in np.linspace(0, 1, 6):
        draw.line([xy(tick, 0), xy(tick, 1)], fill=_GREY)
        draw.line([xy(0, tick), xy(1, tick)], fill=_GREY)
        x, y = xy(tick, 0)
        draw.text((x - 8, y + 4), f"{tick:.1f}", fill=_BLACK, font=font)
        x, y = xy(0, tick)
        draw.text((x - 26, y - 6), f"{tick:.1f}", fill=_BLACK, font=font)
    for k in range(20):  # dashed chance diagonal
        a, b = k / 20, (k + 0.5) / 20
        draw.line([xy(a, a), xy(b, b)], fill=(150, 150, 150))
    draw.rectangle([xy(0, 1), xy(1, 0)], outline=_BLACK)
    points = [xy(float(x), float(y)) for x, y in zip(fpr, tpr, strict=True)]
    if len(points) >= 2:
        draw.line(points, fill=_CURVE, width=3)
    label = f"{title}  AUROC {auroc:.4f}" if np.isfinite(auroc) else f"{title}  AUROC n/a"
    draw.text((margin_l, 12), label, fill=_BLACK, font=font)
    draw.text((margin_l + w / 2 - 50, size - 20), "false positive rate", fill=_BLACK, font=font)
    draw.text((4, 14), "TPR", fill=_BLACK, font=font)
    img.save(path)


def heat_colours(values: np.ndarray) -> np.ndarray:
    """A jet-like colour ramp: [H, W] in [0, 1] -> uint8 [H, W, 3] (blue low, red high)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25])  # red, green, blue peaks along the ramp
    rgb = np.clip(1.5 - np.abs(4.0 * (v - centres)), 0.0, 1.0)
    return (rgb * 255).astype(np.uint8)


def overlay_panel(
    image: Image.Image,
    anomaly_map: np.ndarray,
    threshold: float,
    caption: Sequence[str],
    mask: np.ndarray | None = None,
    *,
    alpha: float = 0.5,
    min_side: int = 256,
) -> Image.Image:
    """[image | heatmap over image (threshold contour in white) | ground truth], captioned.

    ``image`` is what the model saw (ROI-cropped, resized), ``anomaly_map`` [H, W] at the model's
    resolution, ``mask`` [H, W] bool or None. Small models are shown enlarged to ``min_side``.
    """
    map_h, map_w = anomaly_map.shape
    scale = max(1, -(-min_side // max(map_h, map_w)))
    side_h, side_w = map_h * scale, map_w * scale

    def enlarge(arr: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(arr, scale, axis=0), scale, axis=1)

    base = np.asarray(image.convert("RGB").resize((side_w, side_h)), dtype=np.float32)
    heat = enlarge(heat_colours(anomaly_map / (2.0 * threshold))).astype(np.float32)
    blended = (base * (1 - alpha) + heat * alpha).astype(np.uint8)
    above = enlarge(anomaly_map >= threshold)
    if above.any():  # outline where the map crosses the threshold
        blended[above & ~_eroded(above)] = _WHITE
    tiles = [Image.fromarray(base.astype(np.uint8)), Image.fromarray(blended)]
    if mask is not None:
        tiles.append(Image.fromarray(enlarge(mask.astype(np.uint8) * 255)).convert("RGB"))
    bar = 14 * len(caption) + 6
    panel = Image.new("RGB", (side_w * len(tiles) + 4 * (len(tiles) - 1), side_h + bar), _WHITE)
    for i, tile in enumerate(tiles):
        panel.paste(tile, (i * (side_w + 4), bar))
    draw, font = ImageDraw.Draw(panel), ImageFont.load_default()
    for i, text in enumerate(caption):
        draw.text((4, 3 + 14 * i), text, fill=_BLACK, font=font)
    return panel


def _eroded(mask: np.ndarray) -> np.ndarray:
    """4-neighbour binary erosion (pixels whose neighbours are all set)."""
    padded = np.pad(mask, 1, constant_values=False)
    return (
        padded[1:-1, 1:-1]
        & padded[:-2, 1:-1]
        & padded[2:, 1:-1]
        & padded[1:-1, :-2]
        & padded[1:-1, 2:]
    )

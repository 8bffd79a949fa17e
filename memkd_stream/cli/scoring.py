"""Score image files with a line model, the way the worker does, and compute test metrics.

Preprocessing is ``memkd.preprocess`` (the one function fit, eval and the worker share), so a
score here equals the score the worker reports for the same image. Metrics are ``memkd.metrics``
(image AUROC, pixel AUROC, AUPRO up to FPR 0.3) over the maps at the model's resolution on the
line's region of interest; ground-truth masks are cropped and resized the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from memkd_stream.cli.inputs import Unreadable

if TYPE_CHECKING:
    from memkd.backbones import Teacher
    from memkd.datasets import Category
    from memkd.line_model import LineModel
    from PIL import Image

__all__ = ["Scored", "category_metrics", "model_view", "score_category", "score_paths"]


@dataclass
class Scored:
    """Per-image results of one scoring run (row i of every array is ``paths[i]``)."""

    paths: list[Path]
    scores: np.ndarray  # [N] float
    maps: np.ndarray  # [N, H, W] float32
    labels: np.ndarray | None = None  # [N] 0 good / 1 defective
    masks: np.ndarray | None = None  # [N, H, W] bool
    defects: list[str] = field(default_factory=list)
    skipped: list[Unreadable] = field(default_factory=list)


def model_view(source: Path | Image.Image, model: LineModel) -> Image.Image:
    """The image as the model sees it: RGB, ROI-cropped, resized to the input size."""
    from memkd.preprocess import load_image
    from PIL import Image

    img = load_image(source)
    if model.roi is not None:
        x, y, w, h = model.roi
        img = img.crop((x, y, x + w, y + h))
    return img.resize((model.input_size, model.input_size), Image.Resampling.BILINEAR)


def score_paths(
    model: LineModel, teacher: Teacher, paths: list[Path], batch_size: int = 16
) -> Scored:
    """Scores and maps of ``paths``; files that cannot be read or cropped are skipped, listed."""
    import torch
    from memkd.preprocess import load_image, preprocess

    kept: list[Path] = []
    skipped: list[Unreadable] = []
    scores: list[np.ndarray] = []
    maps: list[np.ndarray] = []
    pending: list[tuple[Path, torch.Tensor]] = []

    def flush() -> None:
        batch = torch.stack([t for _, t in pending])
        result = model.score(teacher, batch)
        scores.append(result.scores.float().cpu().numpy())
        maps.append(result.maps[:, 0].float().cpu().numpy())
        kept.extend(p for p, _ in pending)
        pending.clear()

    for path in paths:
        try:
            tensor = preprocess(
                load_image(path), model.input_size, model.mean, model.std, model.roi
            )
        except Exception as exc:  # undecodable file or ROI outside the image
            skipped.append(Unreadable(Path(path), f"{type(exc).__name__}: {exc}"))
            continue
        pending.append((Path(path), tensor))
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    size = model.input_size
    return Scored(
        kept,
        np.concatenate(scores) if scores else np.zeros(0),
        np.concatenate(maps) if maps else np.zeros((0, size, size), np.float32),
        skipped=skipped,
    )


def _mask(path: Path | None, model: LineModel) -> np.ndarray:
    from PIL import Image

    size = model.input_size
    if path is None:
        return np.zeros((size, size), dtype=bool)
    img = Image.open(path).convert("L")
    if model.roi is not None:
        x, y, w, h = model.roi
        img = img.crop((x, y, x + w, y + h))
    return np.asarray(img.resize((size, size), Image.Resampling.NEAREST)) > 127


def score_category(
    model: LineModel, teacher: Teacher, category: Category, batch_size: int = 16
) -> Scored:
    """Score an MVTec-layout category's test split, with labels and ground-truth masks."""
    items = {Path(item.path): item for item in category.test}
    scored = score_paths(model, teacher, list(items), batch_size)
    kept = [items[p] for p in scored.paths]
    scored.labels = np.array([int(item.label) for item in kept], dtype=np.int64)
    scored.masks = (
        np.stack([_mask(item.mask_path, model) for item in kept])
        if kept
        else np.zeros((0, model.input_size, model.input_size), dtype=bool)
    )
    scored.defects = [item.defect for item in kept]
    return scored


def category_metrics(scored: Scored, threshold: float) -> dict[str, Any]:
    """Image AUROC, pixel AUROC, AUPRO@0.3 and the confusion counts at the line's threshold."""
    from memkd.metrics import aupro, image_auroc, pixel_auroc

    labels = scored.labels if scored.labels is not None else np.zeros(0, dtype=np.int64)
    predicted = scored.scores >= threshold
    metrics: dict[str, Any] = {
        "image_auroc": _finite(image_auroc(labels, scored.scores)),
        "pixel_auroc": _finite(pixel_auroc(scored.masks, scored.maps)),
        "aupro": _finite(aupro(scored.masks, scored.maps, fpr_limit=0.3)),
        "n_good": int((labels == 0).sum()),
        "n_defective": int((labels == 1).sum()),
        "true_positives": int((predicted & (labels == 1)).sum()),
        "false_positives": int((predicted & (labels == 0)).sum()),
        "false_negatives": int((~predicted & (labels == 1)).sum()),
        "true_negatives": int((~predicted & (labels == 0)).sum()),
    }
    return metrics


def _finite(value: float) -> float | None:
    value = float(value)
    return round(value, 6) if np.isfinite(value) else None

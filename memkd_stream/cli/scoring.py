"""Score image files with a line model, the way the worker does; evaluate labelled categories.

Preprocessing is ``memkd.preprocess`` (the one function fit, eval and the worker share), so a
score here equals the score the worker reports for the same image. Labelled categories go through
``memkd.evaluate`` (image AUROC, pixel AUROC, AUPRO up to FPR 0.3) after unreadable test images
are listed and left out, so one broken file does not stop an evaluation. A tiled line is scored
per frame through ``memkd.tiling`` (stitched map, max over tiles), exactly as the worker does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from memkd_stream.cli.inputs import DatasetError, Unreadable, check_readable

if TYPE_CHECKING:
    from memkd.backbones import Teacher
    from memkd.datasets import Category, TestItem
    from memkd.line_model import LineModel
    from memkd.precision import Precision
    from PIL import Image

__all__ = [
    "Scored",
    "evaluate_category",
    "ground_truth",
    "map_size",
    "model_view",
    "score_paths",
]


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


def map_size(model: LineModel, image_size: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of the model's map of an image of ``image_size`` (width, height): the
    input square, or for a tiled line the stitched map over the ROI."""
    if model.tiling is None:
        return model.input_size, model.input_size
    from memkd.tiling import tile_grid

    grid = tile_grid(*image_size, model.tiling, model.input_size, model.roi)
    return grid.map_height, grid.map_width


def model_view(source: Path | Image.Image, model: LineModel) -> Image.Image:
    """The image as the model's map covers it: RGB, ROI-cropped, resized to the map's size."""
    from memkd.preprocess import load_image
    from PIL import Image

    img = load_image(source)
    h, w = map_size(model, img.size)
    if model.roi is not None:
        x, y, rw, rh = model.roi
        img = img.crop((x, y, x + rw, y + rh))
    return img.resize((w, h), Image.Resampling.BILINEAR)


def score_paths(
    model: LineModel,
    teacher: Teacher,
    paths: list[Path],
    batch_size: int = 16,
    precision: Precision | str = "auto",
) -> Scored:
    """Scores and maps of ``paths`` at ``precision``; files that cannot be read or cropped are
    skipped, listed."""
    import torch
    from memkd.preprocess import load_for_model, load_image, preprocess
    from memkd.tiling import score_frame

    kept: list[Path] = []
    skipped: list[Unreadable] = []
    scores: list[np.ndarray] = []
    maps: list[np.ndarray] = []
    pending: list[tuple[Path, torch.Tensor]] = []

    def flush() -> None:
        batch = torch.stack([t for _, t in pending])
        result = model.score(teacher, batch, precision)
        scores.append(result.scores.float().cpu().numpy())
        maps.append(result.maps[:, 0].float().cpu().numpy())
        kept.extend(p for p, _ in pending)
        pending.clear()

    for path in paths:
        try:
            if model.tiling is not None:  # a frame is a batch of its own tiles
                img = load_image(path)
                frame_map, frame_score = score_frame(model, teacher, img, precision, batch_size)
                scores.append(np.array([frame_score]))
                maps.append(frame_map[None])
                kept.append(Path(path))
                continue
            decoded = load_for_model(path, model.input_size, model.roi)
            tensor = preprocess(decoded, model.input_size, model.mean, model.std, model.roi)
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


def ground_truth(item: TestItem, model: LineModel) -> np.ndarray:
    """The item's mask over the model's map: aligned to the image, ROI-cropped, nearest-resized
    (the rule of ``memkd.evaluate``, so figures show what the metrics counted)."""
    from PIL import Image

    with Image.open(item.path) as img:
        image_size = img.size
    h, w = map_size(model, image_size)
    if item.label == 0 or item.mask_path is None:
        return np.zeros((h, w), dtype=bool)
    mask = Image.open(item.mask_path).convert("L")
    if mask.size != image_size:
        mask = mask.resize(image_size, Image.Resampling.NEAREST)
    if model.roi is not None:
        x, y, w, h = model.roi
        mask = mask.crop((x, y, x + w, y + h))
    return np.asarray(mask.resize((w, h), Image.Resampling.NEAREST)) > 0


def evaluate_category(
    model: LineModel,
    teacher: Teacher,
    category: Category,
    batch_size: int = 16,
    *,
    keep_maps: bool = False,
    precision: Precision | str = "auto",
) -> tuple[Scored, dict[str, Any]]:
    """``memkd.evaluate`` on the readable test images; returns per-image results and the report.

    The report is ``EvalReport.to_dict(with_images=False)``: metrics (image_auroc, pixel_auroc,
    aupro), per_defect, at_threshold (flagged_bad, false_alarms), counts, seconds.
    """
    import dataclasses

    from memkd.evaluate import evaluate

    items = {Path(item.path): item for item in category.test}
    readable, skipped = check_readable(list(items), model.roi)
    kept = [items[p] for p in readable]
    if not kept:
        raise DatasetError(f"{category.root}: none of the test images can be read")
    report = evaluate(
        model,
        teacher,
        dataclasses.replace(category, test=kept),
        batch_size=batch_size,
        keep_maps=keep_maps,
        precision=precision,
    )
    size = model.input_size
    scored = Scored(
        paths=[Path(r.path) for r in report.records],
        scores=report.scores,
        maps=report.maps if report.maps is not None else np.zeros((0, size, size), np.float32),
        labels=report.labels,
        masks=np.stack([ground_truth(item, model) for item in kept]) if keep_maps else None,
        defects=[r.defect for r in report.records],
        skipped=skipped,
    )
    return scored, report.to_dict(with_images=False)

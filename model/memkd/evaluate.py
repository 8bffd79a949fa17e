"""Evaluate a line model on a category's labelled test images (MVTec AD layout).

The images go through the same ``memkd.preprocess`` as training and serving; masks get the same
region-of-interest crop and are resized to the anomaly map with nearest-neighbour, so a pixel of a
mask always lies over the map pixel it labels. Metrics (MEMKD.md §7): image AUROC over image
scores, pixel AUROC and AUPRO (FPR up to 0.3) over the maps of all test images. Beside them, what
the line's calibrated threshold does on this set: how many defective images it flags and how many
good ones it rejects.

A tiled line (``memkd.tiling``) is evaluated per frame, as the worker scores it: the image score
is the maximum over the frame's tiles and the map is the stitched one, against which the mask
is cropped to the ROI and resized the same way.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from memkd.datasets.mvtec import Category, DatasetError, TestItem
from memkd.metrics import aupro, image_auroc, pixel_auroc
from memkd.precision import Precision
from memkd.preprocess import load_for_model, load_image, preprocess
from memkd.tiling import score_frame

if TYPE_CHECKING:
    from memkd.backbones import Teacher
    from memkd.line_model import LineModel

__all__ = ["EvalReport", "ImageRecord", "evaluate", "format_report_table"]

METRIC_NAMES = ("image_auroc", "pixel_auroc", "aupro")


@dataclass(frozen=True)
class ImageRecord:
    """The outcome for one test image (``flagged``: score >= threshold; None if uncalibrated)."""

    path: str
    defect: str
    label: int
    score: float
    flagged: bool | None


@dataclass
class EvalReport:
    """Per-image scores and the category's metrics; ``maps`` [N, H, W] only when kept."""

    category: str
    records: list[ImageRecord]
    metrics: dict[str, float]
    per_defect: dict[str, dict[str, float]]
    at_threshold: dict[str, float]
    threshold: float | None
    seconds: float
    fpr_limit: float = 0.3
    maps: np.ndarray | None = field(default=None, repr=False)

    @property
    def scores(self) -> np.ndarray:
        return np.array([r.score for r in self.records], dtype=np.float64)

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.records], dtype=np.int64)

    @property
    def n_good(self) -> int:
        return sum(1 for r in self.records if r.label == 0)

    @property
    def n_bad(self) -> int:
        return sum(1 for r in self.records if r.label == 1)

    def to_dict(self, with_images: bool = True) -> dict[str, Any]:
        """JSON-able; undefined metrics (nan) become None."""
        out: dict[str, Any] = {
            "category": self.category,
            "n_good": self.n_good,
            "n_bad": self.n_bad,
            "metrics": _finite(self.metrics),
            "fpr_limit": self.fpr_limit,
            "per_defect": {k: _finite(v) for k, v in self.per_defect.items()},
            "threshold": self.threshold,
            "at_threshold": _finite(self.at_threshold),
            "seconds": round(self.seconds, 3),
            "images_per_s": round(len(self.records) / self.seconds, 2) if self.seconds else None,
        }
        if with_images:
            out["images"] = [asdict(r) for r in self.records]
        return out


def evaluate(
    line_model: LineModel,
    teacher: Teacher,
    category: Category,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    keep_maps: bool = False,
    fpr_limit: float = 0.3,
    precision: Precision | str = Precision.AUTO,
) -> EvalReport:
    """Score every test image of ``category``; return the report.

    ``device``: None keeps the model where it is; otherwise the model and teacher are moved there
    ("auto" = CUDA when present). ``precision``: what ``LineModel.score`` runs at. Defective
    images without a mask (``require_masks=False``) count for the image metrics only.
    """
    if not category.test:
        raise DatasetError(f"{category.root} has no test images to evaluate on.")
    if device is not None:
        target = _resolve_device(device)
        line_model.to(target)
        teacher.to(target)
    size, mean, std, roi = line_model.input_size, line_model.mean, line_model.std, line_model.roi
    threshold = line_model.calibration.threshold if line_model.calibration else None
    records: list[ImageRecord] = []
    maps: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    has_mask: list[bool] = []
    started = time.perf_counter()
    for start in range(0, len(category.test), batch_size):
        items = category.test[start : start + batch_size]
        images: list[Any]  # reduced decodes (ScaledImage) or, for a tiled line, full frames
        if line_model.tiling is None:
            images = [load_for_model(item.path, size, roi) for item in items]
            batch = torch.stack([preprocess(img, size, mean, std, roi) for img in images])
            result = line_model.score(teacher, batch, precision)
            batch_maps = list(result.maps[:, 0].float().cpu().numpy())
            batch_scores = list(result.scores.float().cpu().numpy())
        else:
            images = [load_image(item.path) for item in items]
            frames = [
                score_frame(line_model, teacher, img, precision, batch_size) for img in images
            ]
            batch_maps = [m for m, _ in frames]
            batch_scores = [s for _, s in frames]
        for item, img, amap, score in zip(items, images, batch_maps, batch_scores, strict=True):
            flagged = bool(score >= threshold) if threshold is not None else None
            record = ImageRecord(str(item.path), item.defect, item.label, float(score), flagged)
            records.append(record)
            maps.append(amap)
            masks.append(_mask_for(item, img.size, roi, amap.shape))
            has_mask.append(item.label == 0 or item.mask_path is not None)
    seconds = time.perf_counter() - started
    stack = np.stack(maps)
    pixel_rows = np.flatnonzero(has_mask)
    mask_stack, map_stack = np.stack(masks)[pixel_rows], stack[pixel_rows]
    labels = [r.label for r in records]
    scores = [r.score for r in records]
    metrics = {
        "image_auroc": image_auroc(labels, scores),
        "pixel_auroc": pixel_auroc(mask_stack, map_stack),
        "aupro": aupro(mask_stack, map_stack, fpr_limit),
    }
    return EvalReport(
        category=category.name,
        records=records,
        metrics=metrics,
        per_defect=_per_defect(records),
        at_threshold=_at_threshold(records),
        threshold=threshold,
        seconds=seconds,
        fpr_limit=fpr_limit,
        maps=stack if keep_maps else None,
    )


def format_report_table(reports: list[EvalReport]) -> str:
    """A plain-text table, one row per category and a mean row, metrics in percent."""
    header = (
        "category", "good", "bad", "image AUROC", "pixel AUROC", "AUPRO",
        "flagged bad", "false alarms",
    )  # fmt: skip
    rows = []
    for r in reports:
        rows.append(
            (
                r.category,
                str(r.n_good),
                str(r.n_bad),
                *(_pct(r.metrics[m]) for m in METRIC_NAMES),
                _pct(r.at_threshold.get("flagged_bad", math.nan)),
                _pct(r.at_threshold.get("false_alarms", math.nan)),
            )
        )
    if len(reports) > 1:
        means = [_mean([r.metrics[m] for r in reports]) for m in METRIC_NAMES]
        rows.append(("mean", "", "", *(_pct(v) for v in means), "", ""))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = [_table_line(row, widths) for row in (header, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _table_line(cells: tuple[str, ...], widths: list[int]) -> str:
    """First column left-aligned, numbers right-aligned."""
    first, *rest = zip(cells, widths, strict=True)
    return "  ".join([first[0].ljust(first[1]), *(c.rjust(w) for c, w in rest)])


def _mask_for(
    item: TestItem,
    image_size: tuple[int, int],
    roi: tuple[int, int, int, int] | None,
    map_hw: tuple[int, ...],
) -> np.ndarray:
    """The item's ground truth over the map: ROI-cropped like the image, nearest-resized."""
    h, w = map_hw
    if item.label == 0 or item.mask_path is None:
        return np.zeros((h, w), dtype=bool)
    with Image.open(item.mask_path) as opened:
        mask = opened.convert("L")
    if mask.size != image_size:
        mask = mask.resize(image_size, Image.Resampling.NEAREST)
    if roi is not None:
        x, y, rw, rh = roi
        mask = mask.crop((x, y, x + rw, y + rh))
    if mask.size != (w, h):
        mask = mask.resize((w, h), Image.Resampling.NEAREST)
    return np.asarray(mask) > 0


def _per_defect(records: list[ImageRecord]) -> dict[str, dict[str, float]]:
    """Image AUROC of each defect kind against all good images."""
    good = [r.score for r in records if r.label == 0]
    out: dict[str, dict[str, float]] = {}
    for defect in sorted({r.defect for r in records if r.label == 1}):
        bad = [r.score for r in records if r.defect == defect and r.label == 1]
        auroc = image_auroc([0] * len(good) + [1] * len(bad), good + bad)
        out[defect] = {"n": float(len(bad)), "image_auroc": auroc}
    return out


def _at_threshold(records: list[ImageRecord]) -> dict[str, float]:
    """Share of defective images flagged and of good images falsely flagged at the threshold."""
    if any(r.flagged is None for r in records):
        return {}
    bad = [bool(r.flagged) for r in records if r.label == 1]
    good = [bool(r.flagged) for r in records if r.label == 0]
    return {
        "flagged_bad": float(np.mean(bad)) if bad else math.nan,
        "false_alarms": float(np.mean(good)) if good else math.nan,
    }


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _finite(values: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in values.items()}


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f}"

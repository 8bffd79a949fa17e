"""What ``fit`` and ``eval`` read: image folders, MVTec-layout categories, teachers.

A dataset folder is either an MVTec-layout category (``train/good``, ``test/<defect>``,
``ground_truth``) or a plain folder of good images. Files that cannot be decoded are listed and
skipped, so one corrupt image from a camera does not stop a retrain; too few readable images is an
error that names the folder.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memkd_stream.contract.formats import IMAGE_SUFFIXES
from memkd_stream.errors import ErrorCode, MemkdStreamError

if TYPE_CHECKING:
    from memkd.backbones import Teacher
    from memkd.precision import Precision

    from memkd_stream.settings import Settings

__all__ = [
    "BACKBONES",
    "DEFAULT_SCORE_TOPK",
    "DEFAULT_TARGET_FPR",
    "DEFAULT_THRESHOLD_RULE",
    "PRECISIONS",
    "TARGET_THRESHOLD_RULES",
    "THRESHOLD_RULES",
    "DatasetError",
    "DatasetInput",
    "Unreadable",
    "check_readable",
    "line_tiling",
    "load_teacher_for",
    "parse_positive",
    "parse_rate",
    "parse_roi",
    "parse_score_topk",
    "parse_tile",
    "resolve_dataset",
    "torch_device",
    "torch_precision",
]

# memkd.threshold's names, spelled here so that `--help` does not import torch (a unit test
# keeps them equal)
THRESHOLD_RULES = ("lognormal", "lognormal_fit", "normal", "mean_std", "quantile")
TARGET_THRESHOLD_RULES = ("lognormal", "lognormal_fit", "normal")  # the rules a target rate sets
DEFAULT_THRESHOLD_RULE = "lognormal_fit"
DEFAULT_TARGET_FPR = 0.01
DEFAULT_SCORE_TOPK = 0.01  # memkd.config.ModelConfig.score_topk

# Listed here (not imported from memkd) so that ``--help`` never imports torch.
BACKBONES = ("tf_efficientnet_lite0", "tf_efficientnet_lite2", "wide_resnet50_2")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # memkd.precision.Precision


class DatasetError(MemkdStreamError):
    """A dataset folder that is missing, empty, or has too few readable images."""

    code: str = ErrorCode.DATASET_INVALID


@dataclass(frozen=True)
class Unreadable:
    """A file skipped because it cannot be used, and why."""

    path: Path
    reason: str


@dataclass
class DatasetInput:
    """Good training images, plus the labelled test split when the folder is a category."""

    root: Path
    kind: str  # "mvtec" | "folder"
    train: list[Path]
    category: Any = None  # memkd.datasets.Category for "mvtec"
    unreadable: list[Unreadable] = field(default_factory=list)

    @property
    def has_labels(self) -> bool:
        return self.category is not None and bool(self.category.test)


def parse_positive(text: str) -> float:
    """argparse type: a finite number > 0 (a threshold, minutes)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def parse_rate(text: str) -> float:
    """argparse type: a rate in (0, 1), e.g. a target false-alarm rate."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate between 0 and 1 (e.g. 0.01)")
    return value


def parse_score_topk(text: str) -> float:
    """argparse type: the image score's fraction of top pixels, in [0, 1) (0 = the maximum)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a fraction in [0, 1) (0.01 = the top 1 %, 0 = the maximum)"
        )
    return value


def parse_roi(text: str) -> tuple[int, int, int, int]:
    """``"X,Y,W,H"`` -> a crop box in pixels (argparse type)."""
    import argparse

    try:
        x, y, w, h = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--roi {text!r}: expected four integers X,Y,W,H (pixels), e.g. 100,50,800,600"
        ) from None
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"--roi {text!r}: X,Y must be >= 0 and W,H > 0")
    return x, y, w, h


def parse_tile(text: str) -> tuple[int, int]:
    """``"SIZE[,OVERLAP]"`` -> (tile size, overlap) in image pixels (argparse type; the rules
    of ``memkd.tiling.Tiling``, checked here so that ``--help`` and typos never import torch)."""
    import argparse

    try:
        parts = [int(part) for part in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(
            f"--tile {text!r}: expected SIZE or SIZE,OVERLAP in pixels, e.g. 256 or 256,32"
        )
    size, overlap = parts[0], parts[1] if len(parts) == 2 else 0
    if size < 16 or not 0 <= overlap < size:
        raise argparse.ArgumentTypeError(
            f"--tile {text!r}: SIZE must be >= 16 and 0 <= OVERLAP < SIZE"
        )
    return size, overlap


def line_tiling(tile: tuple[int, int] | None, input_size: int | None) -> tuple[Any, int]:
    """(``memkd.tiling.Tiling`` or None, model input size) from ``--tile`` and ``--input-size``:
    an untiled line defaults to 256 px, a tiled one to its tile size (``default_input_size``)."""
    if tile is None:
        return None, input_size or 256
    from memkd.tiling import Tiling, default_input_size

    tiling = Tiling(*tile)
    return tiling, input_size or default_input_size(tiling)


def resolve_dataset(root: Path) -> DatasetInput:
    """Classify ``root`` and list its images (nothing decoded yet)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist or is not a folder")
    if (root / "train" / "good").is_dir():
        from memkd.datasets import read_mvtec_category

        category = read_mvtec_category(root, suffixes=IMAGE_SUFFIXES)
        return DatasetInput(root, "mvtec", [Path(p) for p in category.train], category)
    from memkd.datasets import list_images

    images = [Path(p) for p in list_images(root, IMAGE_SUFFIXES)]
    if not images:
        raise DatasetError(
            f"no images in {root} (expected PNG/JPEG/BMP/TIFF files, or an MVTec-layout "
            "category with train/good)"
        )
    return DatasetInput(root, "folder", images)


def check_readable(
    paths: list[Path], roi: tuple[int, int, int, int] | None = None
) -> tuple[list[Path], list[Unreadable]]:
    """Split ``paths`` into decodable images (that fit ``roi``) and the rest, with reasons.

    PIL only (no torch), so a bad dataset is reported in a second, before any model loads; the
    size is taken after EXIF orientation, as ``memkd.preprocess.load_image`` sees it.
    """
    from PIL import Image, ImageOps

    good: list[Path] = []
    bad: list[Unreadable] = []
    for path in paths:
        try:
            with Image.open(path) as opened:
                opened.load()
                img = ImageOps.exif_transpose(opened) or opened
        except Exception as exc:  # PIL raises many types for broken files
            bad.append(Unreadable(path, f"cannot be decoded ({type(exc).__name__}: {exc})"))
            continue
        if roi is not None:
            x, y, w, h = roi
            if x + w > img.width or y + h > img.height:
                bad.append(
                    Unreadable(
                        path, f"region {x},{y},{w},{h} does not fit {img.width}x{img.height}"
                    )
                )
                continue
        good.append(path)
    return good, bad


def torch_device(settings: Settings, override: str | None = None) -> str:
    """``--device``, else the settings' device; ``auto`` -> CUDA when present."""
    import torch

    wanted = override or settings.model.device
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return wanted


def torch_precision(settings: Settings, override: str | None, device: str) -> Precision:
    """``--precision``, else the settings' precision, resolved for ``device`` (auto -> bf16 or
    fp32). One that cannot run there (fp16 off CUDA) is a usage error, raised before any work."""
    from memkd.precision import PrecisionError, resolve_precision

    from memkd_stream.cli.main import UsageError

    wanted = override or settings.model.precision
    try:
        return resolve_precision(wanted, device)
    except PrecisionError as exc:
        raise UsageError(
            f"{exc} (--precision, or model.precision / MEMKD_MODEL__PRECISION)", code=exc.code
        ) from None


def load_teacher_for(
    backbone: str, weights: Path | None, settings: Settings, device: str
) -> Teacher:
    """The frozen teacher of ``backbone``; WRN50 weights default to the settings' file."""
    from memkd.backbones import load_teacher

    if weights is None and backbone == "wide_resnet50_2":
        weights = settings.model.wrn50_weights
    return load_teacher(backbone, weights, device=device)

"""Read a category in the MVTec AD folder layout (also what ``synth_dataset`` writes).

Layout (Bergmann et al., CVPR 2019)::

    <category>/train/good/*.png
    <category>/test/good/*.png                      no masks
    <category>/test/<defect>/<stem>.png
    <category>/ground_truth/<defect>/<stem>_mask.png

Anyone who has MVTec AD can point the evaluator at it; the tests use generated data.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from memkd.errors import MemKDError

__all__ = [
    "IMAGE_EXTENSIONS",
    "Category",
    "DatasetError",
    "TestItem",
    "list_images",
    "read_mvtec_category",
]

# The formats the streaming worker decodes (memkd_stream.contract.formats, which this library
# cannot import; a test keeps the two equal): a line is never trained on an image its worker
# would refuse.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


class DatasetError(MemKDError):
    """A dataset folder that does not have the expected layout."""

    code = "dataset-layout"


@dataclass(frozen=True)
class TestItem:
    """One test image: label 1 = defective; ``mask_path`` is None for good images."""

    __test__ = False  # not a pytest test class, despite the name

    path: Path
    label: int
    mask_path: Path | None
    defect: str


@dataclass(frozen=True)
class Category:
    """A category's training images (all good) and its labelled test images."""

    name: str
    root: Path
    train: list[Path]
    test: list[TestItem] = field(default_factory=list)

    @property
    def n_good(self) -> int:
        return sum(1 for item in self.test if item.label == 0)

    @property
    def n_bad(self) -> int:
        return sum(1 for item in self.test if item.label == 1)

    @property
    def defects(self) -> list[str]:
        return sorted({item.defect for item in self.test if item.label == 1})


def list_images(folder: Path | str, suffixes: Collection[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files directly in ``folder``, sorted by name; hidden files (``._x.png``) skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder of images.", code="dataset-layout")
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes
    )


def read_mvtec_category(
    root: Path | str,
    require_masks: bool = True,
    suffixes: Collection[str] = IMAGE_EXTENSIONS,
) -> Category:
    """Index one category folder; a defective test image without a mask is an error.

    ``test`` may be absent (a category with training images only). With ``require_masks=False``,
    a missing mask gives ``mask_path=None`` instead of an error. Only files whose suffix is in
    ``suffixes`` are images.
    """
    root = Path(root)
    train_dir = root / "train" / "good"
    if not train_dir.is_dir():
        raise DatasetError(
            f"{root} has no train/good folder: it is not an MVTec AD category "
            "(expected <category>/train/good, test/<defect>, ground_truth/<defect>).",
            code="dataset-layout",
        )
    test: list[TestItem] = []
    test_dir = root / "test"
    if test_dir.is_dir():
        for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
            defect = defect_dir.name
            for path in list_images(defect_dir, suffixes):
                if defect == "good":
                    test.append(TestItem(path, 0, None, defect))
                    continue
                mask = _find_mask(root / "ground_truth" / defect, path.stem)
                if mask is None and require_masks:
                    raise DatasetError(
                        f"{path} has no mask: expected "
                        f"{root / 'ground_truth' / defect / (path.stem + '_mask.png')}.",
                        code="dataset-layout",
                    )
                test.append(TestItem(path, 1, mask, defect))
    return Category(name=root.name, root=root, train=list_images(train_dir, suffixes), test=test)


def _find_mask(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}_mask", stem):
        for ext in (".png", ".PNG", ".bmp", ".tif", ".tiff"):
            candidate = folder / f"{name}{ext}"
            if candidate.is_file():
                return candidate
    return None

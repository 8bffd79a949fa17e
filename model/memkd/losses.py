"""MemKD's three losses (model/MEMKD.md §4).

- ``kd_loss``: RD's official form, 1 - cosine between teacher and student maps flattened to one
  C*H*W vector per image, averaged over the batch, summed over the three scales. (The per-pixel
  form of the paper's equations trains far worse.) Compared are the decoder outputs *before*
  fusion with the recalled memory.
- ``nm_loss`` (normality embedding): exemplar teacher features rebuilt from the memory values,
  0.5 * ||norm(rebuilt) - norm(teacher)||^2 per pixel, averaged over pixels and memories.
- ``orth_loss``: mean squared cosine between every key and every value, summed over memories
  (squared, so it asks for orthogonality rather than anti-parallel vectors).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from memkd.memory import NRMemory

__all__ = ["kd_loss", "nm_loss", "orth_loss"]


def kd_loss(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over scales of the batch mean of 1 - cos(flatten(t), flatten(s))."""
    total = teacher[0].new_zeros((), dtype=torch.float32)
    for t, s in zip(teacher, student, strict=True):
        cos = F.cosine_similarity(t.flatten(1).float(), s.flatten(1).float(), dim=1)
        total = total + (1.0 - cos).mean()
    return total


def nm_loss(memories: Sequence[NRMemory], exemplar_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-pixel normalised reconstruction error of exemplar teacher features, mean over memories.

    ``exemplar_feats[k]`` is the teacher feature map the k-th memory stores (stage 3 for the first
    memory, stage 2 for the second).
    """
    losses = []
    for mem, t in zip(memories, exemplar_feats, strict=True):
        rebuilt = mem.reconstruct(t)
        diff = F.normalize(rebuilt.float(), dim=1) - F.normalize(t.float(), dim=1)
        losses.append(0.5 * diff.pow(2).sum(dim=1).mean())
    return torch.stack(losses).mean()


def orth_loss(memories: Sequence[NRMemory]) -> torch.Tensor:
    """Sum over memories of the mean squared key-value cosine."""
    total = memories[0].keys.new_zeros((), dtype=torch.float32)
    for mem in memories:
        cos = F.normalize(mem.keys.float(), dim=1) @ F.normalize(mem.values.float(), dim=1).t()
        total = total + cos.pow(2).mean()
    return total

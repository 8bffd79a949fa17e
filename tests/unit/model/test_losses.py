"""Losses against their definitions in model/MEMKD.md §4."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from memkd.losses import kd_loss, nm_loss, orth_loss
from memkd.memory import NRMemory


def test_kd_loss_is_flattened_cosine_summed_over_scales() -> None:
    torch.manual_seed(0)
    t = [torch.randn(3, 4, 8, 8), torch.randn(3, 5, 4, 4), torch.randn(3, 6, 2, 2)]
    s = [torch.randn_like(x) for x in t]
    expected = sum(
        (1 - F.cosine_similarity(a.reshape(3, -1), b.reshape(3, -1), dim=1)).mean()
        for a, b in zip(t, s, strict=True)
    )
    torch.testing.assert_close(kd_loss(t, s), expected)
    assert float(kd_loss(t, [2.5 * x for x in t])) < 1e-6  # scale does not matter
    # flattened, not per pixel: swapping two pixels' features is a penalty
    swapped = [x.clone() for x in t]
    swapped[0][:, :, 0, 0], swapped[0][:, :, 1, 1] = t[0][:, :, 1, 1], t[0][:, :, 0, 0]
    assert float(kd_loss(t, swapped)) > 1e-4


def test_nm_loss_is_half_squared_distance_of_unit_vectors() -> None:
    torch.manual_seed(1)
    mems = [NRMemory(6, 4, 0.1), NRMemory(3, 4, 0.1)]
    feats = [torch.randn(2, 6, 3, 3), torch.randn(2, 3, 5, 5)]
    per = []
    for m, f in zip(mems, feats, strict=True):
        rec = m.reconstruct(f)
        per.append((1 - F.cosine_similarity(rec, f, dim=1)).mean())  # = 0.5 |a - b|^2 for units
    torch.testing.assert_close(nm_loss(mems, feats), torch.stack(per).mean())


def test_orth_loss_asks_for_orthogonality_not_anti_parallel() -> None:
    mem = NRMemory(4, 2, 0.1)
    with torch.no_grad():
        mem.keys.copy_(torch.eye(4)[:2])
        mem.values.copy_(torch.eye(4)[2:])
    assert orth_loss([mem]).item() == 0.0
    with torch.no_grad():
        mem.values.copy_(-3 * torch.eye(4)[:2])
    # cos matrix [[-1, 0], [0, -1]] -> squared mean 0.5, the same as for parallel vectors
    assert abs(orth_loss([mem]).item() - 0.5) < 1e-6
    assert abs(orth_loss([mem, mem]).item() - 1.0) < 1e-6  # summed over memories

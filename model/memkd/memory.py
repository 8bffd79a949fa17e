"""The normality-recalling (NR) memory of MemKD (Gu et al., ICCV 2023; model/MEMKD.md §3-§4).

L learnable key vectors and L value vectors of width C, both ``nn.Parameter`` (so they learn and
are saved; the one public unofficial implementation gets this wrong). Two reads:

- ``recall(S)`` (inference and training): each student pixel feature is compared with the keys
  (cosine), softmax over the L items at temperature tau, and the weighted sum of the raw values is
  the recalled normality R.
- ``reconstruct(T)`` (normality embedding learning, training only): each teacher exemplar pixel
  queries the values themselves; the result is compared with T by L_NM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NRMemory"]


def _attend(query: torch.Tensor, bank: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax over the L bank items of cosine(query pixel, item) / tau.

    ``query`` is [B, C, N]; returns the weights [B, L, N].
    """
    sim = F.normalize(bank, dim=1) @ F.normalize(query, dim=1)  # [L, C] @ [B, C, N]
    return torch.softmax(sim / temperature, dim=1)


class NRMemory(nn.Module):
    """Keys [L, C] and values [L, C]; maps [B, C, H, W] -> [B, C, H, W]."""

    def __init__(self, channels: int, items: int = 50, temperature: float = 0.1) -> None:
        super().__init__()
        self.channels = channels
        self.items = items
        self.temperature = temperature
        self.keys = nn.Parameter(torch.randn(items, channels))
        self.values = nn.Parameter(torch.randn(items, channels))

    def _read(self, query: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        """Attention read in the query's own memory layout, so no feature map is copied."""
        b, c, h, w = query.shape
        bank, values = bank.to(query.dtype), self.values.to(query.dtype)
        if query.dim() == 4 and query.is_contiguous(memory_format=torch.channels_last) and c > 1:
            flat = query.permute(0, 2, 3, 1).reshape(b, h * w, c)  # a view for NHWC
            sim = F.normalize(flat, dim=2) @ F.normalize(bank, dim=1).t()  # [B, N, L]
            out = torch.softmax(sim / self.temperature, dim=2) @ values  # [B, N, C]
            return out.view(b, h, w, c).permute(0, 3, 1, 2)  # channels_last [B, C, H, W]
        weights = _attend(query.reshape(b, c, h * w), bank, self.temperature)
        return (values.t() @ weights).view(b, c, h, w)  # [C, L] @ [B, L, N]

    def recall(self, student: torch.Tensor) -> torch.Tensor:
        """Recalled normality for each student pixel (keys address, values answer)."""
        return self._read(student, self.keys)

    def reconstruct(self, teacher: torch.Tensor) -> torch.Tensor:
        """Teacher exemplar features rebuilt from the values (NEL; training only)."""
        return self._read(teacher, self.values)

    @torch.no_grad()
    def init_from(self, feats: torch.Tensor, generator: torch.Generator) -> None:
        """Keys and values := L pixel features of ``feats`` [N, C, H, W], spread by k-means++
        seeding on cosine distance (so rare normal patterns get an item too, not only the
        commonest), from a random subsample of at most 8192 pixels."""
        pixels = feats.detach().float().permute(0, 2, 3, 1).reshape(-1, feats.shape[1]).cpu()
        if len(pixels) > 8192:
            pixels = pixels[torch.randperm(len(pixels), generator=generator)[:8192]]
        unit = F.normalize(pixels, dim=1)
        chosen = [int(torch.randint(len(pixels), (1,), generator=generator))]
        dist = 1.0 - unit @ unit[chosen[0]]
        for _ in range(1, min(self.items, len(pixels))):
            weights = dist.clamp(min=0).pow(2)
            if float(weights.sum()) <= 0:
                break
            pick = int(torch.multinomial(weights, 1, generator=generator))
            chosen.append(pick)
            dist = torch.minimum(dist, 1.0 - unit @ unit[pick])
        while len(chosen) < self.items:  # fewer distinct pixels than items: repeat some
            chosen.append(chosen[len(chosen) % len(chosen)])
        picked = pixels[torch.tensor(chosen)].to(self.keys.device, self.keys.dtype)
        self.keys.copy_(picked)
        self.values.copy_(picked)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, items={self.items}, temperature={self.temperature}"

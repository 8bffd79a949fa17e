"""The normality-recalling (NR) memory of MemKD (Gu et al., ICCV 2023; shared/MEMKD.md §3-§4).

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
    """Softmax over the bank items of cosine(query pixel, item) / tau: [B, HW, L]."""
    sim = F.normalize(query, dim=-1) @ F.normalize(bank, dim=-1).t()
    return torch.softmax(sim / temperature, dim=-1)


class NRMemory(nn.Module):
    """Keys [L, C] and values [L, C]; maps [B, C, H, W] -> [B, C, H, W]."""

    def __init__(self, channels: int, items: int = 50, temperature: float = 0.1) -> None:
        super().__init__()
        self.channels = channels
        self.items = items
        self.temperature = temperature
        self.keys = nn.Parameter(torch.randn(items, channels))
        self.values = nn.Parameter(torch.randn(items, channels))

    @staticmethod
    def _flat(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)  # B, HW, C

    def _read(self, query: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        b, c, h, w = query.shape
        weights = _attend(self._flat(query), bank.to(query.dtype), self.temperature)
        out = weights @ self.values.to(query.dtype)
        return out.transpose(1, 2).reshape(b, c, h, w)

    def recall(self, student: torch.Tensor) -> torch.Tensor:
        """Recalled normality for each student pixel (keys address, values answer)."""
        return self._read(student, self.keys)

    def reconstruct(self, teacher: torch.Tensor) -> torch.Tensor:
        """Teacher exemplar features rebuilt from the values (NEL; training only)."""
        return self._read(teacher, self.values)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, items={self.items}, temperature={self.temperature}"

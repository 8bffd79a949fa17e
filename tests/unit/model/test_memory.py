"""The NR memory reads: keys address and values answer (recall); values answer NEL queries."""

from __future__ import annotations

import torch
from memkd.memory import NRMemory


def _as_map(vectors: torch.Tensor) -> torch.Tensor:
    """[N, C] -> [1, C, 1, N] so each vector is one pixel."""
    return vectors.t().unsqueeze(0).unsqueeze(2)


def test_recall_at_low_temperature_returns_the_value_of_the_closest_key() -> None:
    torch.manual_seed(0)
    mem = NRMemory(channels=8, items=5, temperature=1e-3)
    query = mem.keys.detach()[[3, 1]] * 7.0  # same direction as keys 3 and 1, other length
    out = mem.recall(_as_map(query))
    expected = _as_map(mem.values.detach()[[3, 1]])
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_recall_weights_are_a_softmax_over_cosines() -> None:
    torch.manual_seed(1)
    mem = NRMemory(channels=6, items=4, temperature=0.5)
    q = torch.randn(3, 6)
    cos = (
        torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(mem.keys, dim=1).t()
    )
    expected = torch.softmax(cos / 0.5, dim=1) @ mem.values
    torch.testing.assert_close(mem.recall(_as_map(q)), _as_map(expected))


def test_reconstruct_queries_the_values() -> None:
    torch.manual_seed(2)
    mem = NRMemory(channels=8, items=5, temperature=1e-3)
    target = mem.values.detach()[[0, 4]]
    torch.testing.assert_close(
        mem.reconstruct(_as_map(target)), _as_map(target), atol=1e-4, rtol=1e-4
    )


def test_high_temperature_recall_is_nearly_the_mean_value() -> None:
    mem = NRMemory(channels=16, items=50, temperature=100.0)
    out = mem.recall(torch.randn(1, 16, 2, 2))
    mean = mem.values.detach().mean(0)
    torch.testing.assert_close(out[0, :, 0, 0], mean, atol=0.05, rtol=0.05)


def test_channels_last_read_equals_the_nchw_read() -> None:
    torch.manual_seed(3)
    mem = NRMemory(channels=12, items=9, temperature=0.1)
    x = torch.randn(2, 12, 5, 7)
    nhwc = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(mem.recall(nhwc), mem.recall(x))
    torch.testing.assert_close(mem.reconstruct(nhwc), mem.reconstruct(x))
    assert mem.recall(nhwc).is_contiguous(memory_format=torch.channels_last)

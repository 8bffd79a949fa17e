"""memkd.precision: resolution per device, honest CPU bf16 detection, autocast."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from memkd import precision as precision_module
from memkd.precision import (
    Precision,
    PrecisionError,
    autocast,
    cpu_native_bf16,
    resolve_precision,
)


@pytest.fixture
def cpu_bf16(monkeypatch: pytest.MonkeyPatch) -> Callable[[bool], None]:
    """Set what the CPU check answers: ``cpu_bf16(True)``."""

    def answer(native: bool) -> None:
        monkeypatch.setattr(precision_module, "cpu_native_bf16", lambda: native)

    return answer


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_follows_the_cpu_bf16_check(cpu_bf16, native: bool, expected: str) -> None:
    cpu_bf16(native)
    assert resolve_precision("auto", "cpu") is Precision(expected)


def test_explicit_precisions_on_the_cpu() -> None:
    assert resolve_precision("fp32", "cpu") is Precision.FP32
    assert resolve_precision(Precision.BF16, torch.device("cpu")) is Precision.BF16  # emulated
    with pytest.raises(PrecisionError, match="fp16 needs a CUDA GPU") as err:
        resolve_precision("fp16", "cpu")
    assert err.value.code == "precision-unsupported"
    with pytest.raises(PrecisionError, match="bf16 runs on CPUs and CUDA") as err:
        resolve_precision("bf16", "meta")
    with pytest.raises(PrecisionError, match="unknown precision 'fp8'") as err:
        resolve_precision("fp8", "cpu")
    assert err.value.code == "precision-invalid"


def test_cpu_check_falls_back_to_cpuinfo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def missing() -> bool:
        raise RuntimeError("this torch has no oneDNN")

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", missing)
    for flags, expected in (
        ("flags\t\t: fpu sse avx avx2", False),
        ("flags\t\t: fpu avx2 avx512f avx512_bf16", True),
        ("flags\t\t: fpu avx2 amx_tile amx_bf16", True),
        ("Features\t: fp asimd sve bf16", True),  # Arm
    ):
        (tmp_path / "cpuinfo").write_text(f"processor\t: 0\n{flags}\n")
        monkeypatch.setattr(precision_module, "_CPUINFO", tmp_path / "cpuinfo")
        cpu_native_bf16.cache_clear()
        assert cpu_native_bf16() is expected, flags
    monkeypatch.setattr(precision_module, "_CPUINFO", tmp_path / "none")
    cpu_native_bf16.cache_clear()
    assert cpu_native_bf16() is False
    cpu_native_bf16.cache_clear()  # the real answer for the next test


def test_autocast_is_a_no_op_for_fp32_and_bf16_otherwise() -> None:
    x = torch.randn(2, 4)
    with autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
        assert (x @ x.T).dtype == torch.float32
    with autocast("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert (x @ x.T).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="resolve 'auto'"):
        _ = Precision.AUTO.autocast_dtype

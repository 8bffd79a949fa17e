"""memkd.precision: resolution per device, honest CPU bf16 detection, autocast; fp32/bf16 parity.

The parity test scores the same unseen images with a tiny trained line model at fp32 and at
forced bf16 (emulated on CPUs without native bf16: slower, same numbers as native up to rounding)
and checks the figures DESIGN.md §7 promises: map correlation >= 0.99, >= 99 % identical verdicts
at the line's threshold, image AUROC within 0.005. It needs >= 100 images, or one flipped
verdict would already be 2 %: 120 images, 40 good and 80 defective.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from memkd import precision as precision_module
from memkd.backbones import Teacher
from memkd.datasets import read_mvtec_category, synth_dataset
from memkd.line_model import LineModel
from memkd.metrics import image_auroc
from memkd.precision import (
    Precision,
    PrecisionError,
    autocast,
    cpu_native_bf16,
    resolve_precision,
)
from memkd.train import load_batch

from tests.support.models import tiny_artifact


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


@pytest.mark.slow  # ~1 min: a 30-step fit and 120 images at emulated bf16 on 2 cores
def test_bf16_scores_like_fp32(tmp_path_factory: pytest.TempPathFactory, lite0: Teacher) -> None:
    out = tmp_path_factory.mktemp("parity")
    model = LineModel.load(tiny_artifact(out, teacher=lite0, precision="fp32"), lite0)
    assert model.calibrated_precision is Precision.FP32
    (root,) = synth_dataset(
        out / "unseen", ("grass",), seed=1, n_train=1, n_test_good=40, n_test_bad=80, size=128
    )
    test = read_mvtec_category(root).test
    x = load_batch([item.path for item in test], model.input_size, model.mean, model.std)
    labels = [item.label for item in test]
    fp32 = model.score(lite0, x, "fp32")
    bf16 = model.score(lite0, x, "bf16")
    assert bf16.maps.dtype == bf16.scores.dtype == torch.float32
    assert not torch.equal(fp32.maps, bf16.maps)  # bf16 did run
    correlation = np.corrcoef(fp32.maps.flatten().numpy(), bf16.maps.flatten().numpy())[0, 1]
    assert correlation >= 0.99
    flagged = fp32.scores >= model.threshold
    assert 0 < int(flagged.sum()) < len(labels)  # else identical verdicts would prove nothing
    assert (flagged == (bf16.scores >= model.threshold)).float().mean().item() >= 0.99
    auroc_fp32 = image_auroc(labels, fp32.scores.numpy())
    assert abs(image_auroc(labels, bf16.scores.numpy()) - auroc_fp32) <= 0.005

"""Compute precision of the forward passes: one setting, resolved in one place (DESIGN.md §7).

``Precision`` is what a line is fitted and scored at, distinct from the artifact's storage dtype
(``LineModel.save(dtype=...)``). ``fp32`` runs plainly; ``bf16`` and ``fp16`` run the teacher and
the student under ``torch.autocast``; losses, anomaly maps, scores and calibration statistics are
always float32 (``losses`` and ``anomaly`` upcast), so a threshold is a float32 number whatever
the precision that produced the scores.

``auto`` means bf16 where the hardware does bf16 natively, else fp32: on CUDA devices of compute
capability 8.0 or more (Ampere and later; older GPUs only emulate bf16), and on CPUs whose oneDNN
reports bf16 support (AVX-512 or AMX with bf16, or Arm bf16). Elsewhere forced bf16 still works,
emulated, and is many times slower than fp32 (bench/precision.py). fp16 runs on CUDA only.
"""

from __future__ import annotations

import contextlib
import functools
from enum import StrEnum
from pathlib import Path

import torch

from memkd.errors import MemKDError

__all__ = [
    "Precision",
    "PrecisionError",
    "autocast",
    "cpu_native_bf16",
    "native_bf16",
    "resolve_precision",
]

_CPUINFO = Path("/proc/cpuinfo")
# x86 flags (AVX-512 BF16, AMX) and the Arm feature that give bf16 arithmetic in hardware.
_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
_CUDA_BF16_CAPABILITY = (8, 0)


class PrecisionError(MemKDError):
    """A precision this device cannot run, or a name that is not a precision."""

    code = "precision-unsupported"


class Precision(StrEnum):
    """``auto`` (resolved per device by ``resolve_precision``), ``fp32``, ``bf16``, ``fp16``."""

    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype of a resolved precision (None: no autocast, plain float32)."""
        if self is Precision.AUTO:
            raise ValueError("resolve 'auto' for a device first (resolve_precision)")
        return _AUTOCAST_DTYPES[self]


_AUTOCAST_DTYPES: dict[Precision, torch.dtype | None] = {
    Precision.FP32: None,
    Precision.BF16: torch.bfloat16,
    Precision.FP16: torch.float16,
}


def _cpuinfo_bf16(path: Path) -> bool:
    """True when /proc/cpuinfo lists a bf16 flag (x86 ``flags``, Arm ``Features``)."""
    try:
        text = path.read_text()
    except OSError:  # not Linux, or no procfs in the container
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return bool(_BF16_CPU_FLAGS & set(value.split()))
    return False


@functools.cache
def cpu_native_bf16() -> bool:
    """Does this CPU do bf16 arithmetic in hardware? Asked once per process.

    oneDNN's own check first (what the bf16 kernels will use); /proc/cpuinfo when this torch
    build cannot answer.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return _cpuinfo_bf16(_CPUINFO)


@functools.cache
def _cuda_native_bf16(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= _CUDA_BF16_CAPABILITY


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 natively (what ``auto`` resolves to bf16 on)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return _cuda_native_bf16(index)
    if device.type == "cpu":
        return cpu_native_bf16()
    return False


def _parse(setting: Precision | str) -> Precision:
    try:
        return Precision(str(setting).lower())
    except ValueError:
        choices = ", ".join(p.value for p in Precision)
        raise PrecisionError(
            f"unknown precision {setting!r}; choose one of {choices}", code="precision-invalid"
        ) from None


def resolve_precision(setting: Precision | str, device: torch.device | str) -> Precision:
    """The concrete precision (fp32, bf16 or fp16) ``setting`` means on ``device``.

    Raises:
        PrecisionError: an unknown name, fp16 on anything but CUDA, or bf16 on a device type
            autocast does not cover here (neither CPU nor CUDA).
    """
    wanted = _parse(setting)
    dev = torch.device(device)
    if wanted is Precision.AUTO:
        return Precision.BF16 if native_bf16(dev) else Precision.FP32
    if wanted is Precision.FP16 and dev.type != "cuda":
        raise PrecisionError(
            f"precision fp16 needs a CUDA GPU, but the model runs on {dev}; "
            "choose auto, fp32 or bf16 on this machine"
        )
    if wanted is Precision.BF16 and dev.type not in ("cpu", "cuda"):
        raise PrecisionError(
            f"precision bf16 runs on CPUs and CUDA GPUs, not on {dev}; choose auto or fp32"
        )
    return wanted


def autocast(
    device: torch.device | str, precision: Precision | str
) -> contextlib.AbstractContextManager[object]:
    """The autocast context of ``precision`` on ``device``; a no-op for fp32."""
    dev = torch.device(device)
    dtype = resolve_precision(precision, dev).autocast_dtype
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=dtype)

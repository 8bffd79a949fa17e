"""The line-model artifact: one safetensors file, its JSON record in the header, a sha256 beside it.

A line artifact must be safe to load from any source (a file, Redis bytes) on a machine that trusts
nothing it receives: safetensors holds only raw tensor bytes and a JSON header, so loading one can
never execute code (no pickle anywhere). The record (DESIGN.md §5: how to rebuild the network,
calibration, provenance) is JSON under the metadata key ``"memkd"``. The sha256 of the whole file is
written to ``<file>.sha256`` in sha256sum's format and checked before a single byte is parsed.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from memkd.errors import MemKDError

__all__ = [
    "FORMAT_VERSION",
    "ArtifactError",
    "check_record_compatible",
    "read_artifact",
    "read_sidecar",
    "sha256_file",
    "sidecar_path",
    "write_artifact",
]

FORMAT_VERSION = "1"
METADATA_KEY = "memkd"
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# A safetensors header bigger than this is not one of ours (records are a few KiB).
_MAX_HEADER_BYTES = 64 * 1024 * 1024


class ArtifactError(MemKDError):
    """An artifact that cannot be used.

    Codes: ``artifact-checksum`` (the bytes are not the ones that were published),
    ``artifact-corrupt`` (not a readable memkd artifact), ``artifact-mismatch`` (a valid artifact
    that does not fit the teacher or this version of memkd).
    """

    code = "artifact-corrupt"

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message, code=code)


def sidecar_path(path: Path) -> Path:
    """Where the checksum of ``path`` lives: ``<file>.sha256`` beside it."""
    return path.with_name(path.name + ".sha256")


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """The sha256 hex digest of a file, read in chunks (artifacts can be hundreds of MiB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def read_sidecar(path: Path) -> str:
    """The sha256 recorded beside ``path`` (first field of a sha256sum line)."""
    side = sidecar_path(path)
    try:
        text = side.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _error(
            "artifact-checksum",
            f"{side} is missing: the artifact's checksum must be kept beside it. Copy the "
            f".sha256 file together with {path.name}, or pass the expected sha256 explicitly.",
        ) from None
    fields = text.split()
    if not fields or not _is_sha256(fields[0]):
        raise _error(
            "artifact-checksum",
            f"{side} does not hold a sha256 checksum; regenerate it with "
            f"'sha256sum {path.name} > {side.name}' only if you trust the artifact.",
        )
    return fields[0].lower()


def write_artifact(
    path: Path | str,
    tensors: Mapping[str, torch.Tensor],
    record: Mapping[str, Any],
    dtype: str = "fp32",
) -> str:
    """Write a line artifact and its ``.sha256`` sidecar; return the sha256 hex digest.

    Floating-point tensors are stored in ``dtype`` (``fp32``, ``fp16`` or ``bf16``); integer
    tensors (e.g. BatchNorm's ``num_batches_tracked``) are kept as they are. The file is written to
    a temporary name in the same folder, fsynced and renamed, so a reader sees either the old file
    or the complete new one, never a torn write.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    path = Path(path)
    metadata = {
        METADATA_KEY: json.dumps(dict(record), sort_keys=True, allow_nan=False),
        "format_version": FORMAT_VERSION,
        "dtype": dtype,
    }
    prepared = _prepare_tensors(tensors, _DTYPES[dtype])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        save_file(prepared, str(tmp), metadata=metadata)
        os.chmod(tmp, _shared_file_mode())  # both mkstemp and safetensors make 0600
        _fsync(tmp)
        digest = sha256_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _write_text_atomic(sidecar_path(path), f"{digest}  {path.name}\n")
    _fsync_dir(path.parent)
    return digest


def read_artifact(
    source: Path | str | bytes,
    expected_sha256: str | None = None,
    *,
    require_checksum: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Verify and read an artifact; return (tensors upcast to fp32, record).

    For a path, the checksum is ``expected_sha256`` or else the one in ``<file>.sha256``; a missing
    sidecar is an error unless ``require_checksum=False``. Bytes are verified only when
    ``expected_sha256`` is given (the line store hands over bytes it has already verified). The
    whole file is read once, so the bytes that are hashed are the bytes that are parsed.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data, name = bytes(source), "artifact bytes"
    else:
        path = Path(source)
        name = str(path)
        if expected_sha256 is None and require_checksum:
            expected_sha256 = read_sidecar(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise _error(
                "artifact-corrupt", f"{path} does not exist; check the path of the line model."
            ) from None
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256.strip().lower():
            raise _error(
                "artifact-checksum",
                f"{name} has sha256 {actual[:12]}… but {expected_sha256.strip()[:12]}… was "
                "published: the file was changed or damaged after it was written. Re-export the "
                "line model or fetch it again; do not use this copy.",
            )
    metadata = _parse_header_metadata(data, name)
    record = _parse_record(metadata, name)
    try:
        raw = load_safetensors(data)
    except Exception as exc:  # the parser's own error types vary between versions
        raise _error(
            "artifact-corrupt", f"{name} is not a readable safetensors file ({exc})."
        ) from exc
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in raw.items()}
    return tensors, record


def check_record_compatible(
    record: Mapping[str, Any], teacher_name: str, teacher_channels: Sequence[int]
) -> None:
    """Refuse a record trained on another teacher (``artifact-mismatch``).

    Expects ``record["teacher"] == {"name": str, "channels": [c1, c2, c3], ...}``.
    """
    teacher = record.get("teacher")
    if not isinstance(teacher, Mapping) or "name" not in teacher or "channels" not in teacher:
        raise _error(
            "artifact-mismatch",
            "The artifact's record does not say which teacher it was trained with; it cannot be "
            "used safely. Retrain the line with this version of memkd.",
        )
    want = (str(teacher["name"]), [int(c) for c in teacher["channels"]])
    have = (teacher_name, [int(c) for c in teacher_channels])
    if want != have:
        raise _error(
            "artifact-mismatch",
            f"The line model was trained with teacher {want[0]} (channels {want[1]}), but the "
            f"teacher given is {have[0]} (channels {have[1]}). Load it with the {want[0]} teacher "
            "or retrain the line on this one.",
        )


def _error(code: str, message: str) -> ArtifactError:
    return ArtifactError(message, code=code)


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)


def _prepare_tensors(
    tensors: Mapping[str, torch.Tensor], float_dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """CPU, contiguous, floats cast; shared storage is copied (safetensors refuses it)."""
    prepared: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{key!r} is a {type(value).__name__}, not a tensor")
        out = value.detach().to("cpu")
        if out.is_floating_point():
            out = out.to(float_dtype)
        out = out.contiguous()
        if out.numel() and out.untyped_storage().data_ptr() in seen:
            out = out.clone()
        if out.numel():
            seen.add(out.untyped_storage().data_ptr())
        prepared[key] = out
    return prepared


def _parse_header_metadata(data: bytes, name: str) -> dict[str, str]:
    """Our own check of the safetensors header before the parser sees it, for clear errors."""
    corrupt = _error(
        "artifact-corrupt",
        f"{name} is not a memkd line artifact (no valid safetensors header). Export it again with "
        "'memkd-stream fit --out'.",
    )
    if len(data) < 8:
        raise corrupt
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > min(_MAX_HEADER_BYTES, len(data) - 8):
        raise corrupt
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise corrupt from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or METADATA_KEY not in metadata:
        raise _error(
            "artifact-corrupt",
            f"{name} is a safetensors file but not a memkd line artifact (no memkd record).",
        )
    return metadata


def _parse_record(metadata: Mapping[str, str], name: str) -> dict[str, Any]:
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise _error(
            "artifact-mismatch",
            f"{name} has artifact format {version!r}; this memkd reads format {FORMAT_VERSION}. "
            "Use the memkd version that wrote it, or retrain the line.",
        )
    try:
        record = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict):
        raise _error("artifact-corrupt", f"{name} has an unreadable memkd record.")
    return record


def _temp_name(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = _temp_name(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.chmod(tmp, _shared_file_mode())
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _shared_file_mode() -> int:
    """The mode a plain new file gets (0o666 less the umask), read without changing the umask."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    return 0o644


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    """Make the renames durable; not every platform can open a directory."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

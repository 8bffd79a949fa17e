"""Delta artifacts: a line version that replaces a few tensors of a full parent, or none.

A memory-only refit (``memkd.refit``) changes only the NR memories, and a threshold change only
the calibration, so shipping the whole student again would move ~330 MiB for a WRN50 line to
change a few hundred KiB (or a few bytes). A delta is an ordinary artifact file (safetensors,
JSON record, ``.sha256`` sidecar; ``memkd.artifact``) holding:

- the replaced tensors, by their state-dict names (``tensors`` in the record; may be empty);
- the whole record of the composed model (network, teacher, input, calibration, provenance),
  with ``kind`` = ``memkd.lineage.DELTA_KIND`` and ``parent`` = the full artifact's sha256 (and
  line and version when known).

Its parent is always a full artifact: a delta of a delta is written against the same full
parent and carries every tensor that differs from it, so composing is one step. Composing checks
that the parent's bytes are the ones named (sha256) and that the network, widths, teacher and
input are identical, and refuses otherwise (``ArtifactError`` ``artifact-mismatch``), like any
artifact that does not fit.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from memkd.anomaly import Calibration
from memkd.artifact import ArtifactError, read_artifact, read_sidecar, write_artifact
from memkd.backbones import Teacher
from memkd.line_model import LineModel, check_teacher
from memkd.lineage import DELTA_KIND, DELTA_SCHEMA, FULL_KIND, ParentRef, is_delta, parent_of
from memkd.lineage import weight_differences as _weight_differences

__all__ = ["compose", "load_delta", "memory_tensor_names", "save_delta", "save_recalibrated"]

ArtifactSource = Path | str | bytes


def memory_tensor_names(model: LineModel) -> list[str]:
    """State-dict names of the NR memories' keys and values (what a memory-only refit changes)."""
    return [name for name in model.student.state_dict() if name.startswith("memories.")]


def save_delta(
    model: LineModel,
    path: Path | str,
    parent: ParentRef,
    tensors: Iterable[str],
    dtype: str = "fp32",
) -> str:
    """Write ``model`` as a delta of the full artifact ``parent``; return its sha256.

    ``tensors`` names the student tensors that differ from the parent (everything else must be
    the parent's: the caller knows what it changed). Writes ``<path>.sha256`` beside it.
    """
    state = model.student.state_dict()
    names = sorted(set(tensors))
    unknown = [name for name in names if name not in state]
    if unknown:
        raise ValueError(f"not tensors of this student: {', '.join(unknown)}")
    record = model.record()
    record["provenance"].setdefault("saved_at", dt.datetime.now(dt.UTC).isoformat())
    record.update(
        kind=DELTA_KIND,
        schema=DELTA_SCHEMA,
        parent=parent.to_dict(),
        tensors=names,
        weights_dtype=dtype,
    )
    return write_artifact(Path(path), {name: state[name] for name in names}, record, dtype=dtype)


def save_recalibrated(
    path: Path | str,
    record: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
    calibration: Calibration,
    parent: ParentRef,
    change: Mapping[str, Any],
) -> str:
    """Write a version with the weights of the version ``record`` describes and another
    calibration, as a delta of the full ``parent``; return its sha256.

    No network is built: ``tensors`` are that version's own delta tensors (empty when it is the
    full parent itself), carried over so the new delta still names only the full parent.
    ``change`` (who, from, to, rule) goes into the provenance as ``recalibrated``.
    """
    own = parent_of(record)
    if own is not None and own.sha256 != parent.sha256:
        raise ValueError("a recalibrated delta keeps the full parent of the version it copies")
    names = sorted(tensors)
    if is_delta(record) and names != sorted(record.get("tensors") or ()):
        raise ValueError("give the version's own delta tensors, all of them")
    new = {k: v for k, v in record.items() if k not in ("parent", "tensors")}
    provenance = dict(new.get("provenance") or {})
    provenance.update(recalibrated=dict(change), saved_at=dt.datetime.now(dt.UTC).isoformat())
    new.update(
        kind=DELTA_KIND,
        schema=DELTA_SCHEMA,
        parent=parent.to_dict(),
        tensors=names,
        calibration=calibration.to_dict(),
        provenance=provenance,
    )
    dtype = str(record.get("weights_dtype") or "fp32")
    return write_artifact(Path(path), dict(tensors), new, dtype=dtype)


def compose(
    delta_tensors: Mapping[str, torch.Tensor],
    delta_record: Mapping[str, Any],
    parent_tensors: Mapping[str, torch.Tensor],
    parent_record: Mapping[str, Any],
    parent_sha256: str,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The full model's (tensors, record) from a delta and the parent it names.

    Raises:
        ArtifactError: ``artifact-mismatch`` when the parent is not the one the delta was made
            from (sha256), is itself a delta, or does not fit the delta's network.
    """
    if not is_delta(delta_record) or delta_record.get("schema") != DELTA_SCHEMA:
        raise _mismatch(
            f"not a delta artifact this memkd can read (kind {delta_record.get('kind')!r}, "
            f"schema {delta_record.get('schema')!r})"
        )
    try:
        wanted = parent_of(delta_record)
    except ValueError as exc:
        raise _mismatch(str(exc)) from None
    assert wanted is not None
    if parent_sha256.lower() != wanted.sha256:
        raise _mismatch(
            f"the delta was made from the artifact with sha256 {wanted.sha256[:12]}…, but the "
            f"parent given has {parent_sha256[:12]}…; give it the parent it names"
        )
    if parent_record.get("kind") != FULL_KIND:
        raise _mismatch("a delta's parent must be a full artifact, and this one is not")
    differences = _weight_differences(delta_record, parent_record)
    if differences:
        raise _mismatch("the delta does not fit its parent: " + "; ".join(differences))
    names = [str(name) for name in delta_record.get("tensors") or ()]
    if sorted(names) != sorted(delta_tensors):
        raise _mismatch("the delta's tensors are not the ones its record lists")
    for name in names:
        have = parent_tensors.get(name)
        if have is None or tuple(have.shape) != tuple(delta_tensors[name].shape):
            raise _mismatch(f"tensor {name} of the delta has no counterpart in the parent")
    tensors = dict(parent_tensors)
    tensors.update(delta_tensors)
    record = {k: v for k, v in delta_record.items() if k not in ("parent", "tensors")}
    record.update(kind=FULL_KIND, schema=parent_record.get("schema"))
    provenance = dict(record.get("provenance") or {})
    provenance["lineage"] = {"parent": wanted.to_dict(), "tensors": sorted(names)}
    record["provenance"] = provenance
    return tensors, record


def load_delta(
    source: ArtifactSource,
    parent: ArtifactSource | LineModel,
    teacher: Teacher | None = None,
    expected_sha256: str | None = None,
    *,
    parent_sha256: str | None = None,
    device: str | torch.device | None = None,
) -> LineModel:
    """Read a delta (sha256-checked like any artifact) and compose it with its parent.

    ``parent`` is the full artifact (a path, checked against ``parent_sha256`` or its sidecar;
    bytes, checked when ``parent_sha256`` is given) or a ``LineModel`` already loaded from it,
    whose sha256 ``parent_sha256`` must then give; a model that itself came from a delta is
    only valid when every tensor it replaced is also one this delta replaces (the worker's
    rule when it composes onto the version it holds). The model goes to ``device``, else the
    teacher's, else the CPU.
    """
    delta_tensors, delta_record = read_artifact(source, expected_sha256)
    if not is_delta(delta_record):
        raise _mismatch("this is a full artifact, not a delta: load it with LineModel.load")
    if isinstance(parent, LineModel):
        if parent_sha256 is None:
            raise ValueError("composing onto a loaded parent needs that parent's sha256")
        parent_tensors = dict(parent.student.state_dict())
        parent_record = parent.record()
        verified = parent_sha256
    else:
        verified = _verified_sha256(parent, parent_sha256)
        parent_tensors, parent_record = read_artifact(parent, verified)
    if teacher is not None:
        check_teacher(dict(delta_record), teacher)
    tensors, record = compose(delta_tensors, delta_record, parent_tensors, parent_record, verified)
    model = LineModel.from_record(record, tensors)
    target = device if device is not None else (teacher.device if teacher else "cpu")
    return model.to(target)


def _verified_sha256(source: ArtifactSource, expected: str | None) -> str:
    """The sha256 ``read_artifact`` will hold ``source`` to: the one given, else its sidecar
    (a path) or its own digest (bytes, which are then checked by nothing but the delta's
    reference to them)."""
    if expected is not None:
        return expected.strip().lower()
    if isinstance(source, bytes | bytearray | memoryview):
        return hashlib.sha256(source).hexdigest()
    return read_sidecar(Path(source))


def _mismatch(text: str) -> ArtifactError:
    return ArtifactError(text + ".", code="artifact-mismatch")

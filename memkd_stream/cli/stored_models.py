"""Line models as the CLI reads them: a stored version (composed with its parent when it is a
delta), or a pair of files, and the teachers they need.

A delta's bytes alone are not a model: its full parent is fetched too (sha256-checked by the
store, and against the sha256 the delta names by ``memkd.delta``). What a version replaced and
which full artifact its weights come from travel with it, because a refit or a threshold change
made from it must name that same full parent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memkd_stream.cli.inputs import load_teacher_for

if TYPE_CHECKING:
    from memkd.backbones import Teacher
    from memkd.line_model import LineModel
    from memkd.lineage import ParentRef

    from memkd_stream.lines.store import LineStore
    from memkd_stream.settings import Settings

__all__ = ["StoredModel", "Teachers", "file_model", "fingerprints", "stored_model"]


class Teachers:
    """One frozen teacher per backbone, loaded on first use (two versions may differ)."""

    def __init__(self, settings: Settings, device: str, weights: Path | None = None) -> None:
        self._settings, self._device, self._weights = settings, device, weights
        self._loaded: dict[str, Teacher] = {}

    def add(self, teacher: Teacher) -> None:
        """A teacher the command already loaded (loading one takes seconds)."""
        self._loaded[teacher.name] = teacher

    def get(self, backbone: str) -> Teacher:
        if backbone not in self._loaded:
            self._loaded[backbone] = load_teacher_for(
                backbone, self._weights, self._settings, self._device
            )
        return self._loaded[backbone]

    def for_record(self, record: dict[str, Any]) -> Teacher:
        return self.get(str(record["model"]["backbone"]))


@dataclass
class StoredModel:
    """One version of a line, ready to score, and where its weights come from."""

    line: str
    version: int
    model: LineModel
    teacher: Teacher
    record: dict[str, Any]
    sha256: str
    full_parent: ParentRef  # the full artifact its weights are (itself, when it is full)
    replaced: tuple[str, ...]  # the tensors it replaces in that full artifact

    @property
    def ref(self) -> str:
        return f"{self.line}@{self.version}"


def stored_model(store: LineStore, line: str, version: int, teachers: Teachers) -> StoredModel:
    """Fetch ``line@version`` (and its full parent when it is a delta) and build the model."""
    from memkd.delta import load_delta
    from memkd.line_model import LineModel
    from memkd.lineage import ParentRef, delta_tensor_names, is_delta

    meta = store.meta(line, version)
    record = meta["metadata"]
    teacher = teachers.for_record(record)
    blob = store.fetch_artifact(line, version)
    if is_delta(record):
        parent_version = meta["parent"]
        parent_meta = store.meta(line, parent_version)
        parent_blob = store.fetch_artifact(line, parent_version)
        model = load_delta(
            blob, parent_blob, teacher, meta["sha256"], parent_sha256=parent_meta["sha256"]
        )
        full = ParentRef(parent_meta["sha256"], parent_version, line)
    else:
        model = LineModel.load(blob, teacher, expected_sha256=meta["sha256"])
        full = ParentRef(meta["sha256"], version, line)
    return StoredModel(
        line, version, model, teacher, record, meta["sha256"], full, delta_tensor_names(record)
    )


def file_model(
    artifact: Path, parent: Path | None, teachers: Teachers
) -> tuple[LineModel, dict[str, Any]]:
    """A model from an artifact file, composed with ``parent`` when it is a delta (both files
    are checked against their ``.sha256`` sidecars)."""
    from memkd.delta import load_delta
    from memkd.line_model import LineModel
    from memkd.lineage import is_delta

    from memkd_stream.cli.main import UsageError
    from memkd_stream.lines.artifact_file import read_artifact_record

    record = read_artifact_record(artifact)
    teacher = teachers.for_record(record)
    if is_delta(record):
        if parent is None:
            raise UsageError(
                f"{artifact} is a delta artifact (only what changed from its full parent): "
                "pass the parent's file with --parent FULL"
            )
        return load_delta(artifact, parent, teacher), record
    if parent is not None:
        raise UsageError(f"{artifact} is a full artifact: --parent is only for deltas")
    return LineModel.load(artifact, teacher), record


def fingerprints(paths: list[Path]) -> list[str]:
    """Short content hashes of image files: what a version trained on, recorded in its
    provenance (``trained_on``) so the activation gate can leave those images out."""
    import hashlib

    return [hashlib.sha256(Path(p).read_bytes()).hexdigest()[:16] for p in paths]

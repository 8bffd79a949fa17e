"""A line's trained model: the student, its calibration and the record to rebuild and audit it.

``LineModel`` is what ``fit`` returns, what the artifact stores (DESIGN.md §5) and what the worker
scores with. The frozen teacher is shared by all lines of a backbone and is not part of it; it is
passed to ``score`` and checked against the record on ``load``.
"""

from __future__ import annotations

import datetime as dt
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import memkd
from memkd.anomaly import AnomalyResult, Calibration, anomaly_result
from memkd.artifact import ArtifactError, check_record_compatible, read_artifact, write_artifact
from memkd.backbones import Teacher, backbone_spec
from memkd.config import ModelConfig
from memkd.lineage import FULL_KIND, is_delta
from memkd.network import MemKDStudent
from memkd.precision import Precision, autocast, resolve_precision

__all__ = ["RECORD_KIND", "RECORD_SCHEMA", "LineModel", "TeacherFeatures", "check_teacher"]

RECORD_KIND = FULL_KIND
RECORD_SCHEMA = 1


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _recorded_precision(provenance: dict[str, Any]) -> Precision:
    """The precision a line was calibrated at. Artifacts written before it was recorded were
    fitted under bf16 autocast on CUDA and in fp32 everywhere else, which their device says."""
    recorded = provenance.get("precision")
    if recorded is None:
        cuda = str(provenance.get("device", "cpu")).startswith("cuda")
        return Precision.BF16 if cuda else Precision.FP32
    precision = Precision(recorded)  # ValueError for a name this memkd does not know
    if precision is Precision.AUTO:
        raise ValueError("a calibration precision is fp32, bf16 or fp16, never 'auto'")
    return precision


@dataclass(frozen=True)
class TeacherFeatures:
    """The teacher's three feature maps of one batch and the input size they were taken at."""

    maps: list[torch.Tensor]
    size: tuple[int, int]


class LineModel:
    """Student + calibration + region of interest + normalisation + provenance of one line.

    Attributes:
        config: how the student is built.
        student: the trained ``MemKDStudent`` (eval mode).
        calibration: threshold and normal-score statistics (None only before calibration).
        roi: (x, y, w, h) crop box applied before resizing, or None for the whole image.
        teacher_info: ``Teacher.describe()`` of the teacher it was trained with.
        mean, std: the input normalisation (the teacher's).
        provenance: training set size, seed, train config, metrics, timings, versions, and the
            precision the line was fitted and calibrated at.
    """

    def __init__(
        self,
        config: ModelConfig,
        student: MemKDStudent,
        teacher_info: dict[str, Any],
        calibration: Calibration | None = None,
        *,
        roi: Sequence[int] | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.student = student.eval()
        self.teacher_info = dict(teacher_info)
        self.calibration = calibration
        self.roi: tuple[int, int, int, int] | None = (
            tuple(int(v) for v in roi) if roi is not None else None  # type: ignore[assignment]
        )
        self.provenance = dict(provenance or {})

    @property
    def mean(self) -> tuple[float, float, float]:
        r, g, b = (float(v) for v in self.teacher_info["mean"])
        return (r, g, b)

    @property
    def std(self) -> tuple[float, float, float]:
        r, g, b = (float(v) for v in self.teacher_info["std"])
        return (r, g, b)

    @property
    def input_size(self) -> int:
        return self.config.input_size

    @property
    def threshold(self) -> float:
        if self.calibration is None:
            raise ValueError("this line model has not been calibrated")
        return self.calibration.threshold

    @property
    def calibrated_precision(self) -> Precision:
        """The precision the threshold was set at (``provenance["precision"]``)."""
        return _recorded_precision(self.provenance)

    @property
    def device(self) -> torch.device:
        return _device_of(self.student)

    @property
    def nbytes(self) -> int:
        """Bytes of the student's parameters and buffers where they live (for the worker's LRU)."""
        return self.student.nbytes

    def to(self, device: str | torch.device) -> LineModel:
        """Move the student (in channels_last, the faster layout on CPU and CUDA); returns self."""
        self.student.to(torch.device(device)).to(memory_format=torch.channels_last)
        return self

    def score(
        self, teacher: Teacher, batch: torch.Tensor, precision: Precision | str = Precision.AUTO
    ) -> AnomalyResult:
        """Anomaly maps [B, 1, H, W] and scores [B] for a preprocessed batch [B, 3, H, W].

        Runs under inference_mode with the student in eval mode, in channels_last on every device
        (1.4-1.9x the images/s of the default layout on CPU, bench/model_speed.py), teacher and
        student under the autocast of ``precision`` (``memkd.precision``; ``auto``: bf16 where the
        device does it natively, else fp32). Maps and scores are float32 on the model's device.
        Scoring at another precision than ``calibrated_precision`` is allowed: MEMKD.md §6 gives
        the measured parity; callers that know the line (worker, eval) say so once.

        Raises:
            PrecisionError: ``precision`` cannot run on the model's device (fp16 off CUDA).
        """
        return self.score_features(self.teacher_features(teacher, batch, precision), precision)

    def teacher_features(
        self, teacher: Teacher, batch: torch.Tensor, precision: Precision | str = Precision.AUTO
    ) -> TeacherFeatures:
        """The teacher's features of a preprocessed batch, on this model's device and layout.

        Computed once, they serve every line model that shares this one's input (backbone,
        size, normalisation, region of interest: ``memkd.lineage.input_differences``), which is
        what makes a shadow version cost one student forward (``score_features``).
        """
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected a batch [B, 3, H, W], got {tuple(batch.shape)}")
        device = self.device
        used = resolve_precision(precision, device)
        with torch.inference_mode():
            x = batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            with autocast(device, used):
                feats = teacher(x)
        return TeacherFeatures(list(feats), (int(x.shape[-2]), int(x.shape[-1])))

    def score_features(
        self, features: TeacherFeatures, precision: Precision | str = Precision.AUTO
    ) -> AnomalyResult:
        """Maps and scores of this model's student on teacher features (``teacher_features``)."""
        self.student.eval()
        used = resolve_precision(precision, self.device)
        with torch.inference_mode():
            with autocast(self.device, used):
                s_feats = self.student(features.maps)
            return anomaly_result(features.maps, s_feats, features.size, self.config.score_topk)

    def record(self) -> dict[str, Any]:
        """Everything of DESIGN.md §5 as a JSON-able dict (stored in the artifact header)."""
        return {
            "kind": RECORD_KIND,
            "schema": RECORD_SCHEMA,
            "model": self.config.to_dict(),
            "teacher": dict(self.teacher_info),
            "widths": dict(self.student.widths),
            "input_size": self.config.input_size,
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
            "roi": list(self.roi) if self.roi is not None else None,
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "provenance": dict(self.provenance),
        }

    def save(self, path: Path | str, dtype: str = "fp32") -> str:
        """Write the safetensors artifact and ``<path>.sha256``; return the sha256 hex."""
        record = self.record()
        record["provenance"].setdefault("saved_at", dt.datetime.now(dt.UTC).isoformat())
        record["weights_dtype"] = dtype
        return write_artifact(Path(path), self.student.state_dict(), record, dtype=dtype)

    @classmethod
    def from_record(
        cls, record: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None
    ) -> LineModel:
        """Rebuild the network a record describes (and load its weights, strict)."""
        if is_delta(record):
            raise ArtifactError(
                "this is a delta artifact: it holds only what changed from its parent (sha256 "
                f"{str((record.get('parent') or {}).get('sha256'))[:12]}…); load it together "
                "with that parent (memkd.delta.load_delta, or `memkd-stream eval --artifact "
                "DELTA --parent FULL`).",
                code="artifact-mismatch",
            )
        if record.get("kind") != RECORD_KIND or record.get("schema") != RECORD_SCHEMA:
            raise ArtifactError(
                f"not a line model record this memkd can read (kind {record.get('kind')!r}, "
                f"schema {record.get('schema')!r}); retrain the line with this version.",
                code="artifact-mismatch",
            )
        try:
            config = ModelConfig.from_dict(record["model"])
            teacher_info = record["teacher"]
            spec = backbone_spec(config.backbone)
            student = MemKDStudent(
                config, teacher_info["channels"], bool(teacher_info["signed_features"])
            )
            if tuple(teacher_info["channels"]) != spec.channels or dict(record["widths"]) != (
                student.widths
            ):
                raise ValueError("the recorded widths differ from what this memkd builds")
            calibration = (
                Calibration.from_dict(record["calibration"]) if record["calibration"] else None
            )
            _recorded_precision(record.get("provenance") or {})
            if tensors is not None:
                student.load_state_dict(tensors, strict=True)
        except ArtifactError:
            raise
        except Exception as exc:
            raise ArtifactError(
                f"the line model record cannot be rebuilt ({exc}); retrain the line with this "
                "version of memkd.",
                code="artifact-mismatch",
            ) from exc
        return cls(
            config,
            student,
            teacher_info,
            calibration,
            roi=record.get("roi"),
            provenance=record.get("provenance"),
        )

    @classmethod
    def load(
        cls,
        source: Path | str | bytes,
        teacher: Teacher | None = None,
        expected_sha256: str | None = None,
        *,
        device: str | torch.device | None = None,
    ) -> LineModel:
        """Read an artifact (sha256-checked), check it fits ``teacher``, rebuild the line model.

        A path is checked against ``expected_sha256`` or its ``.sha256`` sidecar; bytes are checked
        when ``expected_sha256`` is given. The model goes to ``device``, else the teacher's device,
        else the CPU. Raises ``ArtifactError`` (artifact-checksum / -corrupt / -mismatch).
        """
        tensors, record = read_artifact(source, expected_sha256)
        if teacher is not None:
            check_teacher(record, teacher)
        model = cls.from_record(record, tensors)
        target = device if device is not None else (teacher.device if teacher else "cpu")
        return model.to(target)


def check_teacher(record: dict[str, Any], teacher: Teacher) -> None:
    """Refuse a record trained with another teacher or other weights (``artifact-mismatch``)."""
    check_record_compatible(record, teacher.name, teacher.channels)
    recorded = record.get("teacher", {})
    for key in ("mean", "std", "fingerprint"):
        have = teacher.describe()[key]
        if recorded.get(key) != have:
            raise ArtifactError(
                f"the line model was trained with other {teacher.name} teacher weights "
                f"({key}: {recorded.get(key)} vs {have}); load it with the teacher "
                "weights it was trained with, or retrain the line.",
                code="artifact-mismatch",
            )


def code_version() -> dict[str, str]:
    """Versions that shaped a model, for its provenance."""
    import timm

    return {
        "memkd": memkd.__version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }

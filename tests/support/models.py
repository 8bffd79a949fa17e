"""Tiny trained line artifacts for tests that need a real model (worker, LineStore, CLI).

A real fit (lite0 teacher, synthetic grass, a few steps, 64 px input) is seconds of CPU and gives
an artifact that loads, scores and round-trips exactly like a production one. Callers cache it
per session in their fixtures; this module also reuses a file already written for the same
parameters in ``out_dir``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

LITE0 = "tf_efficientnet_lite0"  # the tests' teacher (the fastest to load and run)

__all__ = ["LITE0", "tiny_artifact"]


def tiny_artifact(
    out_dir: Path,
    category: str = "grass",
    steps: int = 30,
    seed: int = 0,
    *,
    input_size: int = 64,
    n_train: int = 16,
    teacher: Any = None,
    precision: str = "auto",
    score_topk: float | None = None,
    backbone: str = LITE0,
) -> Path:
    """Train a line model (lite0 unless ``backbone`` says otherwise) on a synthetic category and
    save it; return the artifact path.

    The artifact (and its ``.sha256`` sidecar) is ``out_dir/tiny-<category>-...safetensors``;
    the generated images stay in ``out_dir/data-...``. ``teacher`` may pass an already loaded
    teacher of ``backbone`` to save its load time. ``precision`` is the fit's
    (``memkd.precision``; auto is fp32 on a CPU without native bf16, bf16 on one with it).
    ``score_topk`` overrides the image score (``ModelConfig``; None: the default).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{category}-s{steps}-seed{seed}-px{input_size}-n{n_train}"
    tag += "" if precision == "auto" else f"-{precision}"
    tag += "" if score_topk is None else f"-top{score_topk:g}"
    tag += "" if backbone == LITE0 else f"-{backbone}"
    path = out_dir / f"tiny-{tag}.safetensors"
    if path.is_file() and path.with_name(path.name + ".sha256").is_file():
        return path

    from memkd.backbones import load_teacher
    from memkd.config import ModelConfig, TrainConfig
    from memkd.datasets import read_mvtec_category, synth_dataset
    from memkd.train import fit

    data = out_dir / f"data-{tag}"
    if not (data / category / "train" / "good").is_dir():
        synth_dataset(
            data,
            categories=(category,),
            seed=seed,
            n_train=n_train,
            n_test_good=0,
            n_test_bad=0,
            size=max(2 * input_size, 64),
            overwrite=True,
        )
    images = read_mvtec_category(data / category).train
    teacher = teacher if teacher is not None else load_teacher(backbone)
    result = fit(
        images,
        ModelConfig(
            backbone=backbone,
            input_size=input_size,
            **({} if score_topk is None else {"score_topk": score_topk}),
        ),
        TrainConfig(steps=steps, batch_size=8, seed=seed, device="cpu", precision=precision),
        teacher,
    )
    result.model.save(path)
    return path

"""A tiled line on a real broker: fitted with `memkd-stream fit --tile`, each frame's tiles
scored (more tiles than max_batch, so in parts), stitched, and answered with exactly one result
whose score and mask are the library's; an untiled line's records in the same stream too."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.worker_env import WorkerEnv, category_images

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROI = (8, 8, 112, 112)  # 64 px tiles sharing 16 px: 2 x 2 tiles per 128 px frame


def _fit_tiled(worker_env: WorkerEnv, line_data: Path, out: Path) -> Path:
    """`memkd-stream fit --tile` as an operator runs it, publishing to this test's Redis."""
    artifact = out / "T.safetensors"
    cli = Path(sys.executable).with_name("memkd-stream")
    args = [
        str(cli), "fit", "--line", "T", "--data", str(line_data), "--tile", "64,16",
        "--roi", ",".join(map(str, ROI)), "--steps", "4", "--batch-size", "8",
        "--backbone", "tf_efficientnet_lite0",
        "--out", str(artifact), "--json",
    ]  # fmt: skip
    env = {**worker_env.env, "MEMKD_LOG__LEVEL": "WARNING", "PATH": str(cli.parent)}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    return artifact


def _library_frames(artifact: Path, files: list[Path]) -> list[tuple[np.ndarray, float]]:
    """Stitched maps and frame scores from memkd directly (no service code)."""
    from memkd.backbones import load_teacher
    from memkd.line_model import LineModel
    from memkd.preprocess import load_image
    from memkd.tiling import score_frame

    teacher = load_teacher("tf_efficientnet_lite0", None, device="cpu")
    model = LineModel.load(artifact, teacher)
    return [score_frame(model, teacher, load_image(f.read_bytes())) for f in files]


def test_a_tiled_frame_gets_exactly_one_result_with_a_stitched_mask(
    worker_env: WorkerEnv, artifact_v1: Path, line_data: Path, tmp_path: Path
) -> None:
    artifact = _fit_tiled(worker_env, line_data, tmp_path)
    store = worker_env.store()
    assert store.current("T") == 1
    store.publish("A", artifact_v1, who="test")  # an untiled line in the same stream
    files = category_images(line_data)
    tiled_ids = [f"t-{i}" for i in range(len(files))]
    plain_ids = ["a-0", "a-1"]
    worker = worker_env.start_thread_worker(MEMKD_WORKER__MAX_BATCH="3")
    try:
        worker_env.produce(
            [(i, f.read_bytes()) for i, f in zip(tiled_ids, files, strict=True)], line="T"
        )
        worker_env.produce([(i, files[0].read_bytes()) for i in plain_ids], line="A")
        results = worker_env.read(worker_env.results, count=len(files) + 2, timeout_s=120)
        committed = worker_env.committed_through_end()
    finally:
        assert worker.stop() == 0
    assert sorted(r["id"] for r in results) == sorted(tiled_ids + plain_ids)  # one each
    assert worker_env.read(worker_env.dlq, count=1, timeout_s=1) == []
    reference = _library_frames(artifact, files)
    by_id = {r["id"]: r for r in results}
    for image_id, (ref_map, ref_score) in zip(tiled_ids, reference, strict=True):
        r = by_id[image_id]
        assert r["model_version"] == "T@1" and r["line"] == "T"
        assert r["score"] == pytest.approx(ref_score, abs=1e-4)  # max over the frame's tiles
        assert (r["image"]["height"], r["image"]["width"]) == (128, 128)
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(r["mask"]["data"]))))
        # stitched over the 112 px ROI at the tile scale (64 px input per 64 px tile)
        assert (
            mask.shape == (r["mask"]["height"], r["mask"]["width"]) == ref_map.shape == (112, 112)
        )
        expected = np.floor(np.clip(ref_map / (2 * r["threshold"]), 0, 1) * 255 + 0.5)
        assert np.abs(mask.astype(int) - expected).max() <= 1
        assert (mask.max() >= 128) == r["anomalous"]  # the stitched mask shows what crossed
    for image_id in plain_ids:
        assert by_id[image_id]["model_version"] == "A@1"
        assert (by_id[image_id]["mask"]["height"], by_id[image_id]["mask"]["width"]) == (64, 64)
    ends = worker_env.end_offsets()
    assert {p: committed[p] or 0 for p in ends} == ends

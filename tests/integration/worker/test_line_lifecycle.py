"""Line lifecycle on the real Redis and broker, through the CLI as an operator runs it (issue 16).

A memory-only refit is published as a delta, hot-swapped, and scores what the same model
composed offline scores; its parent cannot be deleted; a worse version is kept from activation
(exit 5) until forced; a threshold change reaches a running worker within the hot-swap time;
shadow results carry both versions' scores.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support.worker_env import REPO, WorkerEnv, category_images

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

CLI = REPO / ".venv" / "bin" / "memkd-stream"
# What a threshold change may take to reach a worker: its refresh interval (2 s in these tests)
# when the event is missed, plus a load on a CPU shared with the rest of the suite.
HOT_SWAP_S = 30.0
# The CLI writes what it publishes (``lines threshold``'s delta file) into its working directory:
# the tests run it in a temporary one, never in the checkout.
_WORKDIR: dict[str, Path] = {}


@pytest.fixture(autouse=True, scope="module")
def _cli_workdir(tmp_path_factory: pytest.TempPathFactory) -> None:
    _WORKDIR["cwd"] = tmp_path_factory.mktemp("cli-cwd")


def _cli(env: WorkerEnv, *args: str | Path) -> tuple[int, dict[str, Any]]:
    """Run ``memkd-stream --json ARGS`` on this test's stream; (exit status, its JSON)."""
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("MEMKD_")} | env.env
    done = subprocess.run(
        [str(CLI), "--json", *map(str, args)],
        env=run_env,
        cwd=_WORKDIR["cwd"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        data = json.loads(done.stdout) if done.stdout.strip() else {}
    except json.JSONDecodeError:
        data = {}
    assert done.returncode in (0, 5), f"{args}: exit {done.returncode}\n{done.stderr[-3000:]}"
    return done.returncode, data


def _teacher() -> Any:
    from memkd.backbones import load_teacher

    return load_teacher("tf_efficientnet_lite0", None, device="cpu")


def _offline_scores(model: Any, teacher: Any, files: list[Path]) -> list[float]:
    """Scores of ``files`` by ``model`` in memkd directly (no service code)."""
    from memkd.preprocess import load_image, preprocess

    batch = torch.stack(
        [
            preprocess(
                load_image(f.read_bytes()), model.input_size, model.mean, model.std, model.roi
            )
            for f in files
        ]
    )
    return [float(s) for s in model.score(teacher, batch).scores]


def _by_id(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in results}


def _stream_until(
    env: WorkerEnv, files: list[Path], done: Any, prefix: str, timeout_s: float
) -> list[dict[str, Any]]:
    """Send ``files`` again every half second until a result satisfies ``done``."""
    deadline = time.monotonic() + timeout_s
    sent = 0
    while time.monotonic() < deadline:
        batch = [(f"{prefix}-{sent + i}", f.read_bytes()) for i, f in enumerate(files)]
        env.produce(batch)
        sent += len(batch)
        time.sleep(0.5)
        results = env.read(env.results, count=1, timeout_s=0.1)
        mine = [r for r in results if r["id"].startswith(prefix)]
        if any(done(r) for r in mine):
            return mine
    raise AssertionError(f"no result satisfied the condition within {timeout_s} s")


def test_a_memory_only_refit_is_a_hot_swapped_delta_scoring_as_composed_offline(
    worker_env: WorkerEnv, artifact_v1: Path, line_data: Path, tmp_path: Path
) -> None:
    from memkd.delta import load_delta

    store = worker_env.store()
    store.publish("A", artifact_v1, who="test")
    files = category_images(line_data)
    worker = worker_env.start_thread_worker()
    try:
        worker_env.produce([(f"v1-{i}", f.read_bytes()) for i, f in enumerate(files)])
        assert len(worker_env.read(worker_env.results, count=len(files), timeout_s=90)) >= 1
        delta = tmp_path / "A-memory.safetensors"
        status, report = _cli(
            worker_env, "fit", "--line", "A", "--memory-only", "--data", line_data,
            "--steps", "4", "--batch-size", "8", "--out", delta, "--force",
        )  # fmt: skip
        assert status == 0 and report["version"] == 2 and report["active"]
        assert report["parent"] == "A@1"
        assert delta.stat().st_size < artifact_v1.stat().st_size / 10  # the memories, not the net
        meta = store.meta("A", 2)
        assert meta["parent"] == 1 and meta["metadata"]["kind"] == "memkd-line-delta"
        assert store.history("A")[0]["reason"] in ("gate-passed", "forced")
        results = _stream_until(
            worker_env, files, lambda r: r["model_version"] == "A@2", "v2", HOT_SWAP_S
        )
        worker_env.produce([(f"check-{i}", f.read_bytes()) for i, f in enumerate(files)])
        time.sleep(1)
        results = worker_env.read(worker_env.results, count=len(files), timeout_s=60)
    finally:
        assert worker.stop() == 0
    teacher = _teacher()
    composed = load_delta(delta, artifact_v1, teacher)
    expected = _offline_scores(composed, teacher, files)
    by_id = _by_id(results)
    for i, score in enumerate(expected):
        result = by_id[f"check-{i}"]
        assert result["model_version"] == "A@2"
        assert result["score"] == pytest.approx(score, abs=1e-4)
        assert result["threshold"] == pytest.approx(composed.threshold)
    # A delta's parent is not deletable while the delta is stored (the CLI says why, exit 1).
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("MEMKD_")}
    refused = subprocess.run(
        [str(CLI), "lines", "delete", "A", "1"],
        env=run_env | worker_env.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1 and "parent-needed" in refused.stderr
    assert store.versions("A") == [1, 2]


def test_a_worse_version_is_published_but_not_activated_without_force(
    worker_env: WorkerEnv, artifact_v1: Path, line_data: Path, tmp_path: Path
) -> None:
    from memkd.line_model import LineModel

    store = worker_env.store()
    store.publish("A", artifact_v1, who="test")
    worse = LineModel.load(artifact_v1, None)
    assert worse.calibration is not None
    worse.calibration = worse.calibration.with_threshold(1e-6)  # every image a false alarm
    worse_file = tmp_path / "worse.safetensors"
    worse.save(worse_file)
    good = line_data / "test" / "good"  # neither version trained on these

    status, report = _cli(worker_env, "lines", "publish", "A", worse_file, "--gate-data", good)
    assert status == 5 and report["version"] == 2 and not report["active"]
    assert report["gate"]["why_not"].startswith("false alarms on good images 100.0 %")
    assert store.current("A") == 1
    assert store.meta("A", 2)["notes"]["gate"]["decision"]["passed"] is False

    # The operator may still activate it: the stored comparison is printed with it.
    status, report = _cli(worker_env, "lines", "activate", "A", "2")
    assert status == 0 and report["comparison"]["kind"] == "gate"
    assert report["comparison"]["gate"]["decision"]["passed"] is False
    assert store.current("A") == 2 and store.history("A")[0]["reason"] == "operator"
    store.rollback("A", who="test")
    assert store.current("A") == 1 and store.history("A")[0]["reason"] == "rollback"

    status, report = _cli(
        worker_env, "lines", "publish", "A", worse_file, "--gate-data", good, "--force"
    )
    assert status == 0 and report["active"] and store.current("A") == 3
    assert store.history("A")[0]["reason"] == "forced"


def test_threshold_change_reaches_a_running_worker_and_shadow_results_carry_both_versions(
    worker_env: WorkerEnv, artifact_v1: Path, artifact_v2: Path, line_data: Path
) -> None:
    from memkd.line_model import LineModel

    store = worker_env.store()
    store.publish("A", artifact_v1, who="test")
    files = category_images(line_data)[:4]
    old = LineModel.load(artifact_v1, None).threshold
    worker = worker_env.start_thread_worker()
    try:
        _stream_until(worker_env, files, lambda r: r["model_version"] == "A@1", "warm", 90)
        moved = round(1.5 * old, 6)
        status, report = _cli(worker_env, "lines", "threshold", "A", "--value", str(moved),
                              "--force")  # fmt: skip
        assert status == 0 and report["version"] == 2 and store.current("A") == 2
        changed = time.monotonic()
        results = _stream_until(
            worker_env, files, lambda r: r["model_version"] == "A@2", "thr", HOT_SWAP_S
        )
        took = time.monotonic() - changed
        swapped = [r for r in results if r["model_version"] == "A@2"]
        assert swapped[0]["threshold"] == pytest.approx(moved) and took < HOT_SWAP_S

        shadow = store.publish("A", artifact_v2, activate=False, who="test")  # same input
        status, _ = _cli(worker_env, "lines", "shadow", "A", str(shadow))
        assert status == 0 and store.shadow("A") == shadow
        results = _stream_until(worker_env, files, lambda r: "shadow" in r, "shadow", HOT_SWAP_S)
        shadowed = [r for r in results if "shadow" in r]

        status, _ = _cli(worker_env, "lines", "activate", "A", str(shadow))
        assert status == 0 and store.shadow("A") is None  # activating it ends the shadowing
    finally:
        assert worker.stop() == 0
    teacher = _teacher()
    second = LineModel.load(artifact_v2, teacher)
    expected = _offline_scores(second, teacher, files)
    assert shadowed
    for r in shadowed:
        assert r["model_version"] == "A@2" and r["threshold"] == pytest.approx(moved)
        assert r["shadow"]["model_version"] == f"A@{shadow}"
        assert r["shadow"]["threshold"] == pytest.approx(second.threshold)
        assert r["shadow"]["anomalous"] == (r["shadow"]["score"] >= r["shadow"]["threshold"])
        index = int(r["id"].rsplit("-", 1)[1]) % len(files)  # _stream_until's ids
        assert r["shadow"]["score"] == pytest.approx(expected[index], abs=1e-4)


def test_more_good_images_reset_the_threshold_without_retraining(
    worker_env: WorkerEnv, artifact_v1: Path, line_data: Path, tmp_path: Path
) -> None:
    """``lines threshold A --good DIR``: the folder's images, scored by the active version, join
    the calibration's held-out scores; the new version keeps the weights (a delta)."""
    from memkd.anomaly import Calibration
    from memkd.line_model import LineModel

    store = worker_env.store()
    store.publish("A", artifact_v1, who="test")
    old = LineModel.load(artifact_v1, None).calibration
    assert old is not None
    good = tmp_path / "good"
    good.mkdir()
    files = sorted((line_data / "test" / "good").glob("*.png"))
    for f in files:
        (good / f.name).write_bytes(f.read_bytes())
    (good / "broken.png").write_bytes(b"not a png")  # skipped with a warning, not fatal
    status, report = _cli(worker_env, "lines", "threshold", "A", "--good", good, "--force")
    assert status == 0, report
    assert report["good_scores"] == {"from": len(old.scores), "to": len(old.scores) + len(files)}
    assert store.current("A") == 2
    meta = store.meta("A", 2)
    new = Calibration.from_dict(meta["metadata"]["calibration"])
    assert new.scores[: len(old.scores)] == old.scores and new.threshold != old.threshold
    assert meta["parent"] == 1  # the same weights: a delta of version 1

    # The folder grows and is given again: only the new images count.
    grown = sorted((line_data / "train" / "good").glob("*.png"))[:3]
    for f in grown:
        (good / f"more-{f.name}").write_bytes(f.read_bytes())
    status, report = _cli(worker_env, "lines", "threshold", "A", "--good", good, "--force")
    assert status == 0, report
    assert report["good_scores"]["to"] == len(old.scores) + len(files) + len(grown)
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("MEMKD_")}
    again = subprocess.run(
        [str(CLI), "lines", "threshold", "A", "--good", str(good)],
        env=run_env | worker_env.env, cwd=_WORKDIR["cwd"], capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert again.returncode == 2, again.stderr  # nothing new in it: nothing published
    assert "are already counted" in again.stderr  # (broken.png is never counted: unreadable)
    assert store.current("A") == 3

"""``memkd-stream`` end to end: generate data, fit a line, inspect it, evaluate it, roll back.

A short schedule (64 px input, a few steps) keeps the whole module around a minute on a CPU; the
point is the command's behaviour (files, Redis state, exit codes, messages), not model quality.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.e2e

LINE = f"e2e-{uuid.uuid4().hex[:8]}"


def _json(done) -> dict:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _one_error_line(done, code: str) -> str:
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr, done.stderr
    assert lines[-1].startswith("memkd-stream: error: "), done.stderr
    assert lines[-1].endswith(f"[{code}]"), done.stderr
    return lines[-1]


@pytest.fixture(scope="module")
def dataset(cli) -> Path:
    done = cli.run(
        "data", "synth", "--out", "data", "--category", "grass", "--seed", "3",
        "--n-train", "20", "--n-test-good", "4", "--n-test-bad", "6", "--size", "128", "--json",
    )  # fmt: skip
    report = _json(done)
    [category] = report["categories"]
    assert category["name"] == "grass"
    assert (category["train_good"], category["test_good"], category["test_defective"]) == (20, 4, 6)
    return cli.cwd / "data" / "grass"


@pytest.fixture(scope="module")
def fitted(cli, dataset) -> dict:
    started = time.monotonic()
    done = cli.run(
        "fit", "--line", LINE, "--data", str(dataset), "--steps", "4", "--batch-size", "8",
        "--input-size", "64", "--out", "models/first.safetensors", "--json",
    )  # fmt: skip
    report = _json(done)
    report["wall_s"] = time.monotonic() - started
    return report


def test_fit_writes_publishes_and_activates(cli, fitted):
    assert fitted["line"] == LINE and fitted["version"] == 1 and fitted["active"] is True
    artifact = cli.cwd / fitted["artifact"]
    assert artifact.is_file()
    sidecar = artifact.with_name(artifact.name + ".sha256")
    assert sidecar.read_text().split()[0] == fitted["sha256"]
    assert fitted["dataset"]["kind"] == "mvtec" and fitted["dataset"]["n_train_images"] == 20
    assert fitted["training"]["steps"] == 4
    assert fitted["threshold"] > 0 and fitted["normal_scores"]["n"] >= 1
    assert set(fitted["metrics"]) == {"image_auroc", "pixel_auroc", "aupro"}
    assert fitted["evaluation"]["n_bad"] == 6


def test_lines_show_list_and_history_describe_the_line(cli, fitted):
    show = _json(cli.run("lines", "show", LINE, "--json"))
    assert show["current"] == 1
    [meta] = show["versions"]
    assert meta["sha256"] == fitted["sha256"]
    assert meta["metadata"]["provenance"]["metrics"] == fitted["metrics"]

    human = cli.run("lines", "show", LINE)
    assert human.returncode == 0
    assert f"line {LINE}: active version 1" in human.stdout
    assert fitted["sha256"][:12] in human.stdout

    listed = _json(cli.run("lines", "list", "--json"))
    assert [r["line"] for r in listed["lines"]] == [LINE]
    assert listed["lines"][0]["backbone"] == "tf_efficientnet_lite2"  # fit's default teacher
    history = _json(cli.run("lines", "history", LINE, "--json"))["history"]
    assert [(h["version"], h["action"]) for h in history] == [(1, "publish")]


def test_eval_writes_metrics_roc_curves_and_heatmaps(cli, fitted, dataset):
    done = cli.run(
        "eval", "--line", LINE, "--data", str(dataset), "--out", "eval-out", "--samples", "3",
        "--json",
    )  # fmt: skip
    report = _json(done)
    out = cli.cwd / "eval-out"
    assert report["model"] == f"{LINE}@1" and report["n_images"] == 10
    assert report["metrics"] == fitted["metrics"]  # same model, same data, same numbers
    assert json.loads((out / "report.json").read_text())["sha256"] == fitted["sha256"]
    assert len((out / "scores.csv").read_text().strip().splitlines()) == 11
    for name in ("roc_image.png", "roc_pixel.png"):
        with Image.open(out / name) as img:
            assert img.size == (480, 480)
    heatmaps = sorted((out / "heatmaps").glob("*.png"))
    assert len(heatmaps) == 3
    with Image.open(heatmaps[0]) as img:
        assert img.width > 3 * 256  # image | heatmap | ground truth


def test_publish_rollback_and_delete(cli, fitted):
    # With an active version and nothing to compare on, the gate keeps it active: exit 5.
    kept = cli.run("lines", "publish", LINE, fitted["artifact"], "--json")
    assert kept.returncode == 5 and json.loads(kept.stdout)["active"] is False
    assert cli.run("lines", "delete", LINE, "2").returncode == 0
    done = _json(cli.run("lines", "publish", LINE, fitted["artifact"], "--force", "--json"))
    assert done["version"] == 3 and done["gate"]["reason"] == "forced"
    back = _json(cli.run("lines", "rollback", LINE, "--json"))
    assert (back["current"], back["previous"]) == (1, 3)
    refused = cli.run("lines", "delete", LINE, "1")
    assert refused.returncode == 1
    assert f"{LINE}@1 is the active version" in _one_error_line(refused, "version-active")
    assert cli.run("lines", "delete", LINE, "3").returncode == 0
    assert _json(cli.run("lines", "show", LINE, "--json"))["current"] == 1
    again = cli.run("lines", "rollback", LINE)
    assert again.returncode == 1
    _one_error_line(again, "no-rollback-target")


def test_unknown_line_and_version_are_one_clear_line(cli, fitted):
    unknown = cli.run("lines", "show", "no-such-line")
    assert unknown.returncode == 1
    assert "line no-such-line is not known" in _one_error_line(unknown, "unknown-line")
    missing = cli.run("lines", "activate", LINE, "99")
    assert missing.returncode == 1
    assert f"line {LINE} has no version 99" in _one_error_line(missing, "unknown-version")


@pytest.mark.parametrize(
    "argv",
    [
        ["fit", "--line", "bad id", "--data", "data"],
        ["fit", "--line", "A"],
        ["lines", "activate", "A", "latest"],
        ["eval", "--data", "data"],
        ["frobnicate"],
    ],
)
def test_wrong_arguments_exit_2_with_usage(cli, argv):
    done = cli.run(*argv, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "usage: memkd-stream" in done.stderr
    assert "Traceback" not in done.stderr


def test_redis_down_fails_fast_with_one_line(cli, dataset):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = {"MEMKD_REDIS__URL": f"redis://127.0.0.1:{port}/0"}
    for argv in (
        ["lines", "list"],
        ["fit", "--line", "A", "--data", str(dataset), "--steps", "1", "--out", "down.safetensors"],
    ):
        started = time.monotonic()
        done = cli.run(*argv, env=down, timeout=60)
        assert time.monotonic() - started < 30
        assert done.returncode == 1
        line = _one_error_line(done, "redis-unavailable")
        assert f"Redis at redis://127.0.0.1:{port}/0 is unreachable" in line
    assert not (cli.cwd / "down.safetensors").exists()  # failed before training


def test_too_few_readable_images_lists_the_bad_files(cli, dataset):
    folder = cli.cwd / "few"
    folder.mkdir()
    for name in ("000.png", "001.png"):
        (folder / name).write_bytes((dataset / "train" / "good" / name).read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    done = cli.run("fit", "--line", "A", "--data", str(folder), "--no-publish", timeout=120)
    assert done.returncode == 1
    assert "broken.png: cannot be decoded" in done.stderr
    line = _one_error_line(done, "dataset-invalid")
    assert "only 2 usable good image(s)" in line and "need at least 8" in line

"""The memkd-stream parser: every command has --help, bad arguments exit 2, --help stays light."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import pytest

from memkd_stream.cli import main
from memkd_stream.cli.main import build_parser

COMMANDS = [
    ["data", "synth"],
    ["fit"],
    ["eval"],
    ["lines"],
    *[["lines", action] for action in ("list", "show", "history", "activate", "rollback")],
    *[["lines", action] for action in ("delete", "publish", "export", "threshold", "shadow")],
    ["lines", "late-policy"],
    ["dlq"],
    ["dlq", "replay"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command, capsys):
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: memkd-stream " + " ".join(command))
    assert "--json" in out  # global options are accepted after the sub-command too


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nope"],
        ["fit", "--data", "d"],  # no --line
        ["fit", "--line", "bad:id", "--data", "d"],
        ["fit", "--line", "A", "--data", "d", "--steps", "0"],
        ["fit", "--line", "A", "--data", "d", "--steps", "5", "--epochs", "1"],
        ["fit", "--line", "A", "--data", "d", "--roi", "1,2,3"],
        ["fit", "--line", "A", "--data", "d", "--tile", "8"],
        ["fit", "--line", "A", "--data", "d", "--tile", "128,128"],
        ["fit", "--line", "A", "--data", "d", "--tile", "128,16,2"],
        ["fit", "--line", "A", "--data", "d", "--backbone", "resnet18"],
        ["fit", "--line", "A", "--data", "d", "--precision", "half"],
        ["fit", "--line", "A", "--data", "d", "--target-fpr", "1.5"],
        ["fit", "--line", "A", "--data", "d", "--target-fpr", "1%"],
        ["fit", "--line", "A", "--data", "d", "--max-minutes", "0"],
        ["fit", "--line", "A", "--data", "d", "--max-minutes", "-1"],
        ["fit", "--line", "A", "--data", "d", "--threshold-rule", "median"],
        ["fit", "--line", "A", "--data", "d", "--threshold-from", "both"],
        ["fit", "--line", "A", "--data", "d", "--score-topk", "1"],
        ["fit", "--line", "A", "--data", "d", "--score-topk", "-0.01"],
        ["eval", "--artifact", "x.safetensors", "--data", "d", "--precision", "fp64"],
        ["eval", "--line", "A", "--artifact", "x.safetensors", "--data", "d"],
        ["eval", "--data", "d"],
        ["lines", "activate", "A", "seven"],
        ["lines", "activate", "A", "0"],
        ["lines", "delete", "A", "-1"],
        ["lines", "export", "A", "--version", "0", "--out", "x.safetensors"],
        ["data", "synth", "--out", "d", "--n-train", "-3"],
        ["data", "synth", "--out", "d", "--size", "10"],
        ["lines", "show", "-bad"],
        ["lines", "threshold", "A"],  # neither --value, --target-fpr nor --good
        ["lines", "threshold", "A", "--value", "1", "--good", "d"],
        ["lines", "threshold", "A", "--value", "1", "--rule", "normal"],
        ["lines", "threshold", "A", "--target-fpr", "0.01", "--rule", "mean_std"],
        ["lines", "threshold", "A", "--value", "0"],
        ["lines", "threshold", "A", "--target-fpr", "1"],
        ["lines", "threshold", "A", "--value", "1", "--target-fpr", "0.01"],
        ["lines", "shadow", "A"],  # neither a version nor --off
        ["lines", "shadow", "A", "3", "--off"],
        ["fit", "--line", "A", "--data", "d", "--memory-only", "--input-size", "128"],
        ["fit", "--line", "A", "--data", "d", "--memory-init", "zeros"],
        ["eval", "--line", "A", "--parent", "p.safetensors", "--data", "d"],
        ["lines", "late-policy", "A", "sometimes"],
        ["lines", "late-policy", "A", "score", "--clear"],
        ["dlq", "replay", "--code", "no-such-code"],
        ["dlq", "replay", "--since", "last tuesday"],
        ["dlq", "replay", "--since", "15 minutes"],
        ["dlq", "replay", "--line", "bad:id"],
        ["--log-level", "LOUD", "lines", "list"],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "usage:" in err or "error:" in err
    assert "Traceback" not in err


def test_arguments_that_only_clash_after_parsing_are_usage_errors(capsys, tmp_path):
    argv = ["eval", "--artifact", str(tmp_path / "a.safetensors"), "--version", "2"]
    assert main([*argv, "--data", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "memkd-stream: error: --version needs --line [usage]"
    )


def test_fp16_on_a_cpu_is_a_usage_error_before_any_training(tmp_path, capsys):
    from PIL import Image

    for i in range(8):
        Image.new("RGB", (16, 16)).save(tmp_path / f"{i}.png")
    argv = ["fit", "--line", "A", "--data", str(tmp_path), "--no-publish", "--device", "cpu"]
    assert main([*argv, "--precision", "fp16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("memkd-stream: error: precision fp16 needs a CUDA GPU")
    assert err.endswith("[precision-unsupported]")


def test_fit_records_the_image_score_it_was_asked_for(tmp_path):
    """``--score-topk 0`` fits a line scored by the map's maximum (tiny defects); the artifact
    records it, so every scorer of the line uses it."""
    from memkd.artifact import read_artifact
    from PIL import Image

    data = tmp_path / "good"
    data.mkdir()
    for i in range(8):
        Image.new("RGB", (64, 64), (10 * i, 90, 60)).save(data / f"{i}.png")
    out = tmp_path / "line.safetensors"
    argv = ["fit", "--line", "A", "--data", str(data), "--no-publish", "--device", "cpu"]
    argv += ["--steps", "1", "--batch-size", "4", "--input-size", "64", "--out", str(out)]
    assert main([*argv, "--score-topk", "0"]) == 0
    _, record = read_artifact(out)
    assert record["model"]["score_topk"] == 0.0


def test_bad_settings_are_one_line_naming_the_variable(monkeypatch, capsys):
    monkeypatch.setenv("MEMKD_REDIS__CHUNK_BYTES", "lots")
    assert main(["lines", "list"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("memkd-stream: error: MEMKD_REDIS__CHUNK_BYTES")
    assert err[0].endswith("[settings-invalid]")


def test_missing_config_file_is_a_usage_error(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "none.toml"), "lines", "list"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_global_options_work_before_and_after_the_command():
    parser = build_parser()
    before = parser.parse_args(["--json", "--log-level", "debug", "lines", "list"])
    after = parser.parse_args(["lines", "list", "--json"])
    assert before.json and before.log_level == "DEBUG"
    assert after.json and not hasattr(after, "log_level")


def test_help_does_not_import_torch():
    code = (
        "import sys, contextlib, io\n"
        "from memkd_stream.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['fit', '--help']); main(['eval', '--help'])\n"
        "print(json.dumps(sorted(m for m in ('torch', 'memkd', 'timm') if m in sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", "import json\n" + code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(done.stdout) == []


def test_unreachable_kafka_is_one_line_naming_the_setting(monkeypatch, capsys):
    """A down broker: one error line with the bootstrap address, exit 1, no traceback."""
    import importlib

    import kafka.errors

    def handler(ctx):
        raise kafka.errors.KafkaTimeoutError("Unable to bootstrap from 127.0.0.1:1")

    # `lines list` stands in for the Kafka commands: the mapping lives in main's dispatch.
    monkeypatch.setattr(importlib.import_module("memkd_stream.cli.lines"), "_list", handler)
    monkeypatch.setenv("MEMKD_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
    assert main(["lines", "list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "Kafka at 127.0.0.1:1 did not answer in time" in err
    assert "[kafka-unavailable]" in err


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("memkd-stream ")


def test_threshold_from_defects_without_any_is_a_usage_error(tmp_path, capsys):
    from PIL import Image

    for i in range(8):
        Image.new("RGB", (64, 64), (i * 20, 90, 90)).save(tmp_path / f"{i}.png")
    argv = ["fit", "--line", "A", "--data", str(tmp_path), "--no-publish", "--device", "cpu"]
    assert main([*argv, "--threshold-from", "defects"]) == 2
    assert "needs defective examples" in capsys.readouterr().err


def test_the_threshold_names_match_memkds() -> None:
    """The CLI spells memkd.threshold's names so that --help never imports torch: keep them
    equal."""
    from memkd.threshold import DEFAULT_RULE, DEFAULT_TARGET_FPR, RULES, TARGET_RULES

    from memkd_stream.cli import inputs

    assert (
        inputs.THRESHOLD_RULES, inputs.TARGET_THRESHOLD_RULES, inputs.DEFAULT_THRESHOLD_RULE,
        inputs.DEFAULT_TARGET_FPR,
    ) == (RULES, TARGET_RULES, DEFAULT_RULE, DEFAULT_TARGET_FPR)  # fmt: skip


def test_the_default_image_score_matches_memkds() -> None:
    from memkd.config import ModelConfig

    from memkd_stream.cli import inputs

    assert ModelConfig().score_topk == inputs.DEFAULT_SCORE_TOPK


def test_the_backbone_names_match_memkds() -> None:
    """``fit --backbone`` offers exactly the teachers memkd can build (spelled, not imported)."""
    from memkd.backbones import BACKBONES

    from memkd_stream.cli import inputs

    assert set(inputs.BACKBONES) == set(BACKBONES)


@pytest.mark.parametrize("preset", [None, "ACTIVE"])
def test_entry_points_let_idle_openmp_threads_sleep(monkeypatch, capsys, preset):
    """Both entry points set OMP_WAIT_POLICY=PASSIVE before anything imports torch (spinning
    OpenMP threads starve the decode pool on shared cores: README.md, "Speed"), unless the
    environment chose a policy."""
    from memkd_stream.worker.__main__ import main as worker_main

    for entry, argv in ((main, ["fit", "--help"]), (worker_main, ["--version"])):
        if preset is None:
            monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
        else:
            monkeypatch.setenv("OMP_WAIT_POLICY", preset)
        with contextlib.suppress(SystemExit):
            entry(argv)
        assert os.environ["OMP_WAIT_POLICY"] == (preset or "PASSIVE")
    capsys.readouterr()

"""Output: one-line errors with codes, JSON documents on stdout, human tables otherwise."""

from __future__ import annotations

import io
import json

from memkd_stream.cli.output import Output, human_bytes


def _output(json_mode: bool) -> tuple[Output, io.StringIO, io.StringIO]:
    stdout, stderr = io.StringIO(), io.StringIO()
    return Output(json_mode, stdout, stderr), stdout, stderr


def test_errors_are_one_line_with_their_code():
    out, stdout, stderr = _output(json_mode=False)
    out.error("redis-unavailable", "Redis at redis://h:1/0\nis unreachable")
    assert stderr.getvalue() == (
        "memkd-stream: error: Redis at redis://h:1/0 is unreachable [redis-unavailable]\n"
    )
    assert stdout.getvalue() == ""


def test_json_mode_puts_results_and_errors_on_stdout_as_json():
    out, stdout, stderr = _output(json_mode=True)
    out.result({"line": "A", "version": 3}, "A@3 is now active")
    out.note("progress goes to stderr")
    assert json.loads(stdout.getvalue()) == {"line": "A", "version": 3}
    assert "progress" in stderr.getvalue()

    out, stdout, _ = _output(json_mode=True)
    out.error("unknown-line", "line B is not known")
    assert json.loads(stdout.getvalue()) == {
        "error": {"code": "unknown-line", "message": "line B is not known"}
    }


def test_human_mode_prints_text_and_tables_unwrapped():
    out, stdout, _ = _output(json_mode=False)
    out.result({"x": 1}, "A@3 is now active")
    wide = "x" * 150
    out.result({}, lambda console: console.print(Output.table(["NAME", "WIDE"], [("a", wide)])))
    text = stdout.getvalue()
    assert text.startswith("A@3 is now active\n")
    assert wide in text  # piped output is not cut at 80 columns
    assert not out.interactive


def test_human_bytes():
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(300 * 1024 * 1024) == "300.0 MiB"

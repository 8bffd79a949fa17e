"""DESIGN.md §2's import boundaries hold, and the check that guards them would catch a breach.

The contracts live in pyproject.toml (``[tool.importlinter]``) and ``make lint`` runs them; this
test runs the same command on the checkout, then on copies with one forbidden import each.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` over the packages under ``root`` (found first on the path)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "model")])}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_checkout_keeps_every_contract(repo_root: Path) -> None:
    done = _lint_imports(repo_root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BROKEN" not in done.stdout


@pytest.mark.parametrize(
    ("module", "statement", "contract"),
    [
        ("model/memkd/errors.py", "import memkd_stream.errors", "the model library never"),
        ("memkd_stream/contract/codes.py", "import socket", "the contract is pure"),
        ("memkd_stream/contract/codes.py", "import memkd_stream.settings", "the contract is pure"),
        ("memkd_stream/cli/output.py", "import memkd_stream.worker.batcher", "never import each"),
        ("memkd_stream/worker/batcher.py", "import memkd_stream.cli.output", "never import each"),
        ("memkd_stream/lines/errors.py", "import memkd_stream.broker.errors", "depend downwards"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    repo_root: Path, tmp_path: Path, module: str, statement: str, contract: str
) -> None:
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(repo_root / "memkd_stream", tmp_path / "memkd_stream", ignore=ignore)
    shutil.copytree(repo_root / "model" / "memkd", tmp_path / "model" / "memkd", ignore=ignore)
    shutil.copy(repo_root / "pyproject.toml", tmp_path / "pyproject.toml")
    assert _lint_imports(tmp_path).returncode == 0  # the copy itself is clean
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{statement}  # noqa\n")
    done = _lint_imports(tmp_path)
    assert done.returncode != 0
    broken = [line for line in done.stdout.splitlines() if line.endswith(" BROKEN")]
    assert any(contract in line for line in broken), done.stdout

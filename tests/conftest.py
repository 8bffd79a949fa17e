"""Suite-wide test conventions.

- Tests under ``tests/integration/`` are marked ``integration`` and those under ``tests/e2e/``
  ``e2e`` automatically, so ``pytest -m "not integration and not e2e"`` runs without services.
- The repository root is on ``sys.path`` (pyproject: ``pythonpath``), so ``tests.support`` imports.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
_FOLDER_MARKS = {"integration": "integration", "e2e": "e2e"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            folder = Path(str(item.fspath)).resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue
        mark = _FOLDER_MARKS.get(folder)
        if mark is not None and item.get_closest_marker(mark) is None:
            item.add_marker(mark)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The checkout's root folder."""
    return TESTS.parent


@pytest.fixture(scope="session")
def ca_pem(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (self-signed) CA certificate, made with openssl for this run: settings load a CA
    file to check it, so a placeholder would not do."""
    import subprocess

    folder = tmp_path_factory.mktemp("tls")
    cert = folder / "ca.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", "/CN=memkd test CA", "-keyout", str(folder / "ca.key"), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert

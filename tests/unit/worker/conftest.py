"""A ``Worker`` wired to a fake consumer (``tests/support/worker_parts.py``), no broker."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from memkd_stream.contract.lateness import LatePolicy
from memkd_stream.settings import load_settings
from memkd_stream.worker.app import Worker
from memkd_stream.worker.late_policies import LatePolicies
from tests.support.worker_parts import TP0, TP1, FakeConsumer


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch) -> Worker:
    for key in list(os.environ):
        if key.startswith("MEMKD_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("MEMKD_WORKER__QUEUE_MAX_RECORDS", "8")
    monkeypatch.setenv("MEMKD_WORKER__REBALANCE_BUDGET_S", "0.5")
    engine = SimpleNamespace(teachers_loaded=True, late_policies=LatePolicies(LatePolicy.SCORE))
    w = Worker(load_settings(), engine)  # type: ignore[arg-type]  # no model is ever scored
    w.state.consumer = FakeConsumer({TP0, TP1})
    return w

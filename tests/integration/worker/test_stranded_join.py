"""A worker whose consumer is left in a rebalance nothing will finish (the kafka-python 3.0.12
state ``memkd_stream.broker.stranded_join`` repairs) rejoins and commits again.

The state is put into the real client on a real broker exactly as the bug leaves it:
``REBALANCING``, no rejoin pending, heartbeats off. Left alone, the broker evicts the member
after the session timeout while it keeps fetching and every commit is refused client-side."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.worker_env import WorkerEnv, category_images

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def _through_end(env: WorkerEnv) -> bool:
    """The group has committed every partition to its end (an empty one counts as 0)."""
    committed, ends = env.committed_through_end(timeout_s=60), env.end_offsets()
    return {p: committed[p] or 0 for p in ends} == ends


def test_a_stranded_consumer_rejoins_and_commits(
    worker_env: WorkerEnv, artifact_v1: Path, line_data: Path
) -> None:
    from kafka.coordinator.base import MemberState

    worker_env.store().publish("A", artifact_v1, who="test")
    files = category_images(line_data)[:6]
    worker = worker_env.start_thread_worker()
    try:
        worker_env.produce([(f"a-{i}", f.read_bytes()) for i, f in enumerate(files)])
        worker_env.read(worker_env.results, count=len(files), timeout_s=90)
        assert _through_end(worker_env)
        coordinator = worker.worker.ctx.state.kafka_consumer._coordinator
        with coordinator._lock:  # what the bug leaves behind
            coordinator.state = MemberState.REBALANCING
            coordinator._disable_heartbeat()
        # Past the session timeout (6 s): the repair rejoins long before, or the member is
        # evicted and rejoins through UnknownMemberId; either way it must end in the group.
        time.sleep(8)
        worker_env.produce([(f"b-{i}", f.read_bytes()) for i, f in enumerate(files)])
        results = worker_env.read(worker_env.results, count=2 * len(files), timeout_s=90)
        committed = _through_end(worker_env)
        rejoins = worker.worker.ctx.metrics.registry.get_sample_value(
            "memkd_stranded_rejoins_total"
        )
    finally:
        assert worker.stop() == 0
    assert sorted(r["id"] for r in results if r["id"].startswith("b-")) == sorted(
        f"b-{i}" for i in range(len(files))
    )
    assert rejoins is not None and rejoins >= 1
    assert committed

"""Pauses: backpressure on all partitions, a parked record only on its own."""

from __future__ import annotations

from types import SimpleNamespace

from memkd_stream.worker.app import Worker
from tests.support.worker_parts import TP0, TP1, tracked_item


def test_backpressure_pauses_all_and_resumes_below_low_water(worker: Worker) -> None:
    consumer = worker.state.consumer
    items = [tracked_item(worker, TP0, o) for o in range(8)]
    worker.flow.update_pauses()
    assert consumer.paused == {TP0, TP1}
    for it in items[:3]:
        worker.tracker.ack(TP0, it.offset, it.generation)
    worker.flow.update_pauses()
    assert consumer.paused == {TP0, TP1}  # 5 in flight: still above the low-water mark (4)
    worker.tracker.ack(TP0, items[3].offset)
    worker.flow.update_pauses()
    assert consumer.paused == set()


def test_parked_record_pauses_only_its_partition(worker: Worker) -> None:
    item = tracked_item(worker, TP1, 0)
    worker.pipeline.control_q.put(("park", item))
    worker.pipeline.decode_pool = SimpleNamespace(submit=lambda fn, it: None)
    worker.flow.handle_control()
    worker.flow.update_pauses()
    assert worker.state.consumer.paused == {TP1}
    # due for a retry: moves to "retrying", still paused until the retry reports back
    worker.flow.parked[TP1] = [(0.0, item)]
    worker.flow.handle_control()
    assert worker.flow.retrying[TP1] == 1
    worker.flow.update_pauses()
    assert worker.state.consumer.paused == {TP1}
    worker.pipeline.control_q.put(("retry_done", item))
    worker.flow.handle_control()
    worker.flow.update_pauses()
    assert worker.state.consumer.paused == set()

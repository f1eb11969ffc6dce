"""Server-side batching: requests share one call, outputs split back, a bounded queue."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import tfads  # noqa: F401  (before TensorFlow)
import grpc

from serving.server import ServingError
from serving.server.batching import BatchScheduler, request_deadline


class BlockingDouble:
    """Doubles ``x``; the first call blocks until released, so later requests queue up."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append(len(inputs["x"]))
        if len(self.calls) == 1:
            self.entered.set()
            self.release.wait()
        return {"y": inputs["x"] * 2, "n": np.full(len(inputs["x"]), len(inputs["x"]))}


@pytest.fixture()
def blocked():
    fn = BlockingDouble()
    scheduler = BatchScheduler(
        fn, max_batch_size=8, batch_timeout_micros=0, max_enqueued_batches=1, num_batch_threads=1
    )
    first = scheduler.submit({"x": np.array([100.0])})
    fn.entered.wait()
    yield fn, scheduler, first
    fn.release.set()
    scheduler.close()


def test_queued_requests_run_as_one_batch_and_get_their_own_rows(blocked):
    fn, scheduler, first = blocked
    tasks = [scheduler.submit({"x": np.array([float(i), float(i) + 0.5])}) for i in range(4)]
    fn.release.set()
    assert first.result()["y"].tolist() == [200.0]
    for i, task in enumerate(tasks):
        out = task.result()
        assert out["y"].tolist() == [2.0 * i, 2.0 * i + 1.0]
        assert out["n"].tolist() == [8, 8]
    assert fn.calls == [1, 8]


def test_full_queue_is_unavailable_and_oversized_task_invalid(blocked):
    fn, scheduler, _ = blocked
    queued = [scheduler.submit({"x": np.arange(4.0)}) for _ in range(2)]
    with pytest.raises(ServingError) as full:
        scheduler.submit({"x": np.arange(1.0)})
    assert full.value.code == grpc.StatusCode.UNAVAILABLE and "queue" in full.value.message
    with pytest.raises(ServingError) as big:
        scheduler.submit({"x": np.arange(9.0)})
    assert big.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "Task size 9 is larger than maximum input batch size 8" in big.value.message
    fn.release.set()
    assert [t.result()["y"].tolist() for t in queued] == [[0.0, 2.0, 4.0, 6.0]] * 2


def test_waiting_past_the_request_deadline_is_deadline_exceeded(blocked):
    fn, scheduler, _ = blocked
    with request_deadline(0.05), pytest.raises(ServingError) as info:
        scheduler({"x": np.arange(2.0)})
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and info.value.http_status == 504


def test_batch_errors_reach_every_caller():
    def broken(inputs):
        raise RuntimeError("boom")

    scheduler = BatchScheduler(
        broken, max_batch_size=4, batch_timeout_micros=0, max_enqueued_batches=2, num_batch_threads=1
    )
    try:
        with pytest.raises(ServingError) as info:
            scheduler({"x": np.arange(2.0)})
        assert info.value.code == grpc.StatusCode.INTERNAL and "boom" in info.value.message
    finally:
        scheduler.close()

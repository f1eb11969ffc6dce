"""Server-side batching like TF Serving's BatchingSession: concurrent requests share one call.

Each signature of a loaded version gets a scheduler. Requests are queued; a batch thread takes
queued tasks up to ``max_batch_size`` rows, waiting at most ``batch_timeout_micros`` for more,
concatenates inputs along dimension 0, runs the signature once and splits the outputs back.

As in TF Serving, a request is batchable only if all its inputs have the same 0th dimension (its size
in rows): ``BatchingSession::InternalRun`` calls ``ComputeInputSize`` (``batching/batching_session.cc``),
i.e. ``ComputeTensorBatchSize`` (``batching/batching_util.h``), before scheduling a Run, and refuses
any other request with INVALID_ARGUMENT, whether or not other requests are queued. Which requests go
through the batcher at all is decided by ``Signature.run`` (servable.py).
"""

from __future__ import annotations

import collections
import contextvars
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import grpc

import numpy as np

from serving.server.errors import ServingError
from serving.server.servable import RunFn, Servable


_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("request_deadline", default=None)


@contextmanager
def request_deadline(seconds: float | None) -> Iterator[None]:
    """Bound how long this thread's request may wait for its batch (gRPC deadline, REST timeout)."""
    token = _DEADLINE.set(None if seconds is None else time.monotonic() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def batch_size(inputs: Mapping[str, np.ndarray]) -> int:
    """The 0th-dimension size all ``inputs`` share: TF Serving's ``ComputeTensorBatchSize``
    (``batching/batching_util.h``), with its INVALID_ARGUMENT messages, plus the inputs' names and sizes.

    Raises:
      ServingError: INVALID_ARGUMENT for no inputs, a scalar input, or inputs whose 0th dimensions differ
        (e.g. a user history sent once, (1, max_len), with (B,) candidate features).
    """
    if not inputs:
        raise ServingError.invalid_argument("Batching Run() must have at least one input tensor")
    size, first = None, None
    for alias in sorted(inputs):
        value = inputs[alias]
        if value.ndim == 0:
            raise ServingError.invalid_argument(
                f"Batching Run() input tensors must have at least one dimension: {alias!r} is a scalar"
            )
        if size is None:
            size, first = value.shape[0], alias
        elif value.shape[0] != size:
            raise ServingError.invalid_argument(
                "Batching Run() input tensors must have equal 0th-dimension size: "
                f"{first!r} has {size}, {alias!r} has {value.shape[0]}"
            )
    return int(size)


class BatchTask:
    """One queued request; ``result()`` blocks until its batch has run."""

    __slots__ = ("inputs", "size", "enqueued", "done", "outputs", "error")

    def __init__(self, inputs: dict[str, np.ndarray], size: int) -> None:
        self.inputs, self.size, self.enqueued = inputs, size, time.monotonic()
        self.done = threading.Event()
        self.outputs: dict[str, np.ndarray] | None = None
        self.error: ServingError | None = None

    def result(self) -> dict[str, np.ndarray]:
        """This request's rows of the batch outputs (or the batch's error); DEADLINE_EXCEEDED past
        the deadline set by ``request_deadline``."""
        deadline = _DEADLINE.get()
        if not self.done.wait(None if deadline is None else max(deadline - time.monotonic(), 0.0)):
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        if self.error is not None:
            raise self.error
        return self.outputs


class BatchScheduler:
    """Batches calls of one ``RunFn``; call it like the function it wraps."""

    def __init__(
        self,
        fn: RunFn,
        *,
        max_batch_size: int,
        batch_timeout_micros: int,
        max_enqueued_batches: int,
        num_batch_threads: int,
        name: str = "batch",
    ) -> None:
        self._fn = fn
        self._max_batch = max_batch_size
        self._timeout = batch_timeout_micros / 1e6
        self._capacity = max_enqueued_batches * max_batch_size
        self._queue: collections.deque[BatchTask] = collections.deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._worker, name=f"{name}-{i}", daemon=True) for i in range(num_batch_threads)
        ]
        for t in self._threads:
            t.start()

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.submit(inputs).result()

    def submit(self, inputs: dict[str, np.ndarray]) -> BatchTask:
        """Enqueue a request; UNAVAILABLE when the queue is full, INVALID_ARGUMENT when it is too big or its
        inputs do not share one 0th dimension (:func:`batch_size`)."""
        size = batch_size(inputs)
        if size > self._max_batch:
            raise ServingError.invalid_argument(
                f"Task size {size} is larger than maximum input batch size {self._max_batch}"
            )
        task = BatchTask(inputs, size)
        with self._cond:
            closed = self._closed
            if not closed:
                if self._queued_rows + size > self._capacity:
                    raise ServingError.unavailable(
                        "The batch scheduling queue to which this task was submitted is full"
                    )
                self._queue.append(task)
                self._queued_rows += size
                self._cond.notify()
        if closed:  # a request that resolved this version just before it was unloaded runs unbatched
            self._execute([task])
        return task

    def close(self) -> None:
        """Finish queued work and stop the batch threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join()

    def _next_batch(self) -> list[BatchTask] | None:
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._queue[0].enqueued + self._timeout
            while self._queued_rows < self._max_batch and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch, rows = [], 0
            while self._queue and rows + self._queue[0].size <= self._max_batch:
                task = self._queue.popleft()
                batch.append(task)
                rows += task.size
            self._queued_rows -= rows
            if self._queue:
                self._cond.notify()
            return batch

    def _worker(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._execute(batch)

    def _execute(self, batch: list[BatchTask]) -> None:
        try:
            self._run(batch)
        except ServingError as e:
            for task in batch:
                task.error = e
        except Exception as e:  # noqa: BLE001 - a batch thread must never die with callers waiting
            for task in batch:
                task.error = ServingError.internal(f"{type(e).__name__}: {e}")
        for task in batch:
            task.done.set()

    def _run(self, batch: list[BatchTask]) -> None:
        if len(batch) == 1:
            batch[0].outputs = self._fn(batch[0].inputs)
            return
        keys = batch[0].inputs.keys()
        try:
            merged = {k: np.concatenate([t.inputs[k] for t in batch]) for k in keys}
        except ValueError:  # trailing dimensions differ: run one by one
            for task in batch:
                self._run([task])
            return
        outputs = self._fn(merged)
        total = sum(t.size for t in batch)
        for alias, value in outputs.items():
            if value.ndim == 0 or value.shape[0] != total:
                raise ServingError.failed_precondition(
                    f"Batched output tensor '{alias}' has shape {list(value.shape)}; its 0th dimension "
                    f"must equal the batch size {total}"
                )
        offset = 0
        for task in batch:
            task.outputs = {k: v[offset : offset + task.size] for k, v in outputs.items()}
            offset += task.size


class Batching:
    """Attaches a BatchScheduler to every signature of loaded servables (the manager's load hooks)."""

    def __init__(self, options: dict[str, int]) -> None:
        self._options = options
        self._schedulers: dict[int, list[BatchScheduler]] = {}
        self._lock = threading.Lock()

    def attach(self, servable: Servable) -> None:
        """Route every signature of ``servable`` through its own scheduler."""
        schedulers = []
        for sig in servable.signatures.values():
            name = f"batch-{servable.name}-{servable.version}"
            sig.runner = BatchScheduler(sig.run_direct, name=name, **self._options)
            schedulers.append(sig.runner)
        with self._lock:
            self._schedulers[id(servable)] = schedulers

    def detach(self, servable: Servable) -> None:
        """Stop the schedulers of an unloaded servable."""
        with self._lock:
            schedulers = self._schedulers.pop(id(servable), [])
        for scheduler in schedulers:
            scheduler.close()

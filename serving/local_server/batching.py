"""Server-side batching: concurrent calls to one signature are merged into one run and split back.

Semantics follow TF Serving's shared batch scheduler: a batch closes when it holds ``max_batch_size`` rows
or ``batch_timeout_micros`` after its first task arrived; ``num_batch_threads`` batches run at once; at most
``max_enqueued_batches`` full batches may wait (then UNAVAILABLE); a batch is padded up to the next
``allowed_batch_sizes`` entry by repeating its first row.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from serving.local_server.config import BatchingOptions
from serving.local_server.errors import (
    ServingError,
    failed_precondition,
    internal,
    invalid_argument,
    unavailable,
)

Runner = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
BatchObserver = Callable[[int, int, float], None]  # (rows, padded rows, seconds the first task waited)


@dataclass
class _Task:
    inputs: Mapping[str, np.ndarray]
    size: int
    enqueued: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    outputs: dict[str, np.ndarray] | None = None
    error: BaseException | None = None


class Batcher:
    """Wraps a runner; ``run(inputs)`` blocks until the batch holding these rows has run."""

    def __init__(
        self,
        runner: Runner,
        options: BatchingOptions,
        *,
        name: str = "batcher",
        observer: BatchObserver | None = None,
    ) -> None:
        self._runner = runner
        self._options = options
        self._observer = observer
        self._timeout = options.batch_timeout_micros / 1e6
        self._queue: deque[_Task] = deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._stopped = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(options.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        size = _batch_size(inputs)
        limit = self._options.max_batch_size
        if size > limit and not self._options.enable_large_batch_splitting:
            raise invalid_argument(f"Task size {size} is larger than maximum input batch size {limit}")
        task = _Task(inputs, size)
        with self._cond:
            if self._stopped:  # the version is being unloaded under a request that already holds it
                return self._runner(inputs)
            if self._queued_rows + size > limit * self._options.max_enqueued_batches:
                raise unavailable("The batch scheduling queue to which this task was submitted is full")
            self._queue.append(task)
            self._queued_rows += size
            self._cond.notify_all()
        task.done.wait()
        if task.error is not None:
            raise task.error
        assert task.outputs is not None
        return task.outputs

    def stop(self) -> None:
        """Finish what is queued, then end the worker threads."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run_batch(batch)

    def _next_batch(self) -> list[_Task] | None:
        limit = self._options.max_batch_size
        with self._cond:
            while not self._queue and not self._stopped:
                self._cond.wait()
            if not self._queue:
                return None
            deadline = self._queue[0].enqueued + self._timeout
            while self._queue and not self._stopped and self._queued_rows < limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch: list[_Task] = []
            rows = 0
            while self._queue and (not batch or rows + self._queue[0].size <= limit):
                task = self._queue.popleft()
                batch.append(task)
                rows += task.size
            self._queued_rows -= rows
            if self._queue:
                self._cond.notify_all()  # let an idle worker start on the rest
            return batch or None

    def _run_batch(self, batch: list[_Task]) -> None:
        waited = time.monotonic() - batch[0].enqueued
        sizes = [task.size for task in batch]
        rows = sum(sizes)
        try:
            if len(batch) == 1 and rows == self._padded(rows):
                outputs = self._runner(batch[0].inputs)
                batch[0].outputs = outputs
            else:
                padded = self._padded(rows)
                merged = {
                    key: _pad(np.concatenate([task.inputs[key] for task in batch], axis=0), padded)
                    for key in batch[0].inputs
                }
                outputs = self._runner(merged)
                _check_rows(outputs, padded)
                offset = 0
                for task in batch:
                    task.outputs = {k: v[offset : offset + task.size] for k, v in outputs.items()}
                    offset += task.size
            if self._observer is not None:
                self._observer(rows, self._padded(rows), waited)
        except ServingError as exc:
            for task in batch:
                task.error = exc
        except Exception as exc:  # never leave a caller waiting forever
            for task in batch:
                task.error = internal(f"batch failed: {exc}")
        finally:
            for task in batch:
                task.done.set()

    def _padded(self, rows: int) -> int:
        for allowed in self._options.allowed_batch_sizes:
            if allowed >= rows:
                return allowed
        return rows


def _batch_size(inputs: Mapping[str, np.ndarray]) -> int:
    return int(next(iter(inputs.values())).shape[0]) if inputs else 0


def _check_rows(outputs: Mapping[str, np.ndarray], rows: int) -> None:
    """Each output must have one row per input row, else splitting it by row would hand one client's values
    to another (TF Serving's BatchingSession::SplitOutputTensors checks the same, with the same words)."""
    for key, array in outputs.items():
        if array.ndim == 0:
            raise failed_precondition(f"Batched output tensor has 0 dimensions (output '{key}')")
        if array.shape[0] != rows:
            raise failed_precondition(
                "Batched output tensor's 0th dimension does not equal the sum of the 0th dimension sizes of "
                f"the input tensors (output '{key}': {array.shape[0]} rows for {rows})"
            )


def _pad(array: np.ndarray, rows: int) -> np.ndarray:
    missing = rows - array.shape[0]
    if missing <= 0:
        return array
    return np.concatenate([array, np.repeat(array[:1], missing, axis=0)], axis=0)

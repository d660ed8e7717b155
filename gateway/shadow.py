"""Shadow copies: the other version answers a user's request off the request path.

One bounded queue and one worker thread per process. `submit` never waits: a full queue drops the copy (and
counts it), so shadows can neither slow nor fail the user's request. The worker's failures are counted and
logged, never raised.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from gateway.per_process import PerProcess

log = logging.getLogger("gateway.shadow")

_STOP = object()


class ShadowWorker:
    def __init__(self, run: Callable[[Any], None], *, maxsize: int, counter: Any) -> None:
        """`run(copy)` answers one copy; `counter` is the Prometheus counter of copies by outcome
        (`answered`, `dropped`, `failed`)."""
        self.run = run
        self.maxsize = maxsize
        self.counter = counter
        self._process = PerProcess(self._start)  # the queue and thread of the process that submits

    def _start(self) -> None:
        self._queue: queue.Queue = queue.Queue(self.maxsize)
        self._thread = threading.Thread(target=self._work, name="shadow-worker", daemon=True)
        self._last_failure = ""
        self._thread.start()

    def submit(self, copy: Any) -> bool:
        """Queue a copy; False (and counted as dropped) when the queue is full."""
        self._process.ensure()
        try:
            self._queue.put_nowait(copy)
        except queue.Full:
            self.counter.labels("dropped").inc()
            return False
        return True

    def _work(self) -> None:
        while True:
            copy = self._queue.get()
            if copy is _STOP:
                return
            try:
                self.run(copy)
            except Exception as exc:  # the other version failing is data for the scorecard, not an outage
                self.counter.labels("failed").inc()
                described = f"{type(exc).__name__}: {str(exc)[:200]}"
                if described != self._last_failure:
                    self._last_failure = described
                    log.warning("a shadow copy failed (%s)", described)
            else:
                self.counter.labels("answered").inc()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the worker: queued copies not yet answered are dropped."""
        if not self._process.started:
            return
        while True:  # make room for the stop mark: what is queued is dropped anyway
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        # Full only if another copy arrived meanwhile: the worker is a daemon, it ends with the process.
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_STOP)
        self._thread.join(timeout)
        self._process.forget()

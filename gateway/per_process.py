"""State that must be made in the process that uses it.

The app can be built before a fork (a pre-fork server imports it in a parent, tests build it in one process
and serve it in another): a thread, an open log or a driver connection made there does not exist, or is not
safe to use, in the child. Objects that own such state start it lazily, once in each process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


class PerProcess:
    """Runs `start()` the first time `ensure()` is called in each process (one caller at a time)."""

    def __init__(self, start: Callable[[], None]) -> None:
        self._start = start
        self._pid: int | None = None
        self._lock = threading.Lock()

    @property
    def started(self) -> bool:
        """Whether `start()` has run in this process (and `forget()` was not called since)."""
        return self._pid == os.getpid()

    def ensure(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():
                self._start()
                self._pid = os.getpid()

    def forget(self) -> None:
        """After a close: the next `ensure()` starts again."""
        self._pid = None

"""Start, watch and stop the local stack's processes.

Each part runs in its own process group (its own session), so stopping it reaches whatever it started too
(Cassandra's JVM, the gateway's workers), and a Ctrl-C in the terminal reaches only the runner, which then
stops the parts in reverse start order. Output is merged, prefixed with the part's name, and also kept in one
log file per part. A part that exits on its own is an error the runner reports, never a silently
half-running stack.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

_COLORS = ("36", "35", "33", "32", "34", "31")  # cyan, magenta, yellow, green, blue, red
_PR_SET_PDEATHSIG = 1


class PartDied(Exception):
    """A part exited while it should be running."""

    def __init__(self, part: Part):
        self.part = part
        tail = "\n".join(f"    {line}" for line in part.tail)
        where = f" (full log: {part.log_path})" if part.log_path else ""
        super().__init__(
            f"{part.name} exited with code {part.returncode}{where}"
            + (f"; its last lines:\n{tail}" if tail else "")
        )


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the runner dies, even by SIGKILL (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


try:  # loaded in the parent: the child must not load libraries between fork and exec
    _LIBC = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - non-Linux
    _LIBC = None

# The `preexec_fn` of every child that must not outlive its launcher (the runner's parts, the Cassandra JVM);
# None where prctl is unavailable.
DIE_WITH_PARENT = _die_with_parent if _LIBC is not None else None


def take_ctrl_c() -> None:
    """Ctrl-C raises KeyboardInterrupt in this process, even when a shell started it in the background:
    `cmd &` (and a CI job run that way) starts it with SIGINT ignored, and Python then leaves it ignored."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


class Part:
    """One supervised process and the thread that copies its output."""

    def __init__(self, name: str, process: subprocess.Popen, log_path: Path | None, tail_lines: int):
        self.name = name
        self.process = process
        self.log_path = log_path
        self.tail: deque[str] = deque(maxlen=tail_lines)
        self.pump: threading.Thread | None = None
        self.stopping = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def running(self) -> bool:
        return self.process.poll() is None

    def ensure_alive(self) -> None:
        """Raise PartDied when the process has exited (used while waiting for it to become ready)."""
        if not self.running():
            if self.pump is not None:
                self.pump.join(timeout=2)  # let its last words reach the tail
            raise PartDied(self)

    def group_alive(self) -> bool:
        """True while any process of the part's group still exists (the leader may be gone already)."""
        self.process.poll()  # reap the leader so a zombie does not count
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)


class Supervisor:
    """The set of parts the runner started; a context manager that always stops them."""

    def __init__(
        self,
        out: TextIO | None = None,
        *,
        log_dir: Path | None = None,
        color: bool | None = None,
        tail_lines: int = 12,
    ):
        self.out = out if out is not None else sys.stdout
        self.log_dir = log_dir
        self.color = self.out.isatty() if color is None else color
        self.tail_lines = tail_lines
        self.parts: list[Part] = []
        self._lock = threading.Lock()
        self._width = 10  # "cassandra " fits

    # -- output ------------------------------------------------------------------------------------------
    def _prefix(self, name: str, index: int) -> str:
        label = f"{name:<{self._width}}|"
        if self.color:
            return f"\033[{_COLORS[index % len(_COLORS)]}m{label}\033[0m "
        return f"{label} "

    def say(self, message: str) -> None:
        """A line from the runner itself, in the same stream as the parts' output."""
        with self._lock:
            self.out.write(self._prefix("stack", len(_COLORS) - 1) + message + "\n")
            self.out.flush()

    def _pump(self, part: Part, index: int) -> None:
        prefix = self._prefix(part.name, index)
        log = open(part.log_path, "ab") if part.log_path else None  # noqa: SIM115 (closed below)
        try:
            assert part.process.stdout is not None
            for raw in iter(part.process.stdout.readline, b""):
                if log:
                    log.write(raw)
                    log.flush()
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                # progress bars redraw with \r: show their latest state only
                line = line.rsplit("\r", 1)[-1]
                part.tail.append(line)
                with self._lock:
                    self.out.write(prefix + line + "\n")
                    self.out.flush()
        finally:
            if log:
                log.close()

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Part:
        """Start argv as a new process group with merged, prefixed output."""
        self._width = max(self._width, len(name) + 1)
        log_path = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.log_dir / f"{name}.log"
        child_env = dict(os.environ if env is None else env)
        child_env.setdefault("PYTHONUNBUFFERED", "1")  # lines as they happen, not when a buffer fills
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=child_env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=DIE_WITH_PARENT,
        )
        part = Part(name, process, log_path, self.tail_lines)
        index = len(self.parts)
        part.pump = threading.Thread(target=self._pump, args=(part, index), name=f"pump-{name}", daemon=True)
        part.pump.start()
        self.parts.append(part)
        return part

    def check_all(self) -> None:
        """Raise PartDied for the first part that exited."""
        for part in self.parts:
            if not part.stopping:
                part.ensure_alive()

    def watch(self, interval_s: float = 0.2) -> None:
        """Block while every part runs; raise PartDied when one exits (KeyboardInterrupt passes through)."""
        while True:
            self.check_all()
            time.sleep(interval_s)

    def stop(self, part: Part, grace_s: float = 20.0) -> None:
        """SIGTERM the part's group, wait up to grace_s for the whole group to go, then SIGKILL it."""
        part.stopping = True
        if not part.group_alive():
            return
        part.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while part.group_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if part.group_alive():
            self.say(f"{part.name} did not stop within {grace_s:.0f} s: killing it")
            part.signal_group(signal.SIGKILL)
            while part.group_alive():
                time.sleep(0.05)
        if part.pump is not None:
            part.pump.join(timeout=2)

    def stop_all(self, grace_s: float = 20.0) -> None:
        """Stop every part, the last started first; a second Ctrl-C kills what is left at once."""
        for part in reversed(self.parts):
            try:
                was_running = part.running()
                self.stop(part, grace_s)
                if was_running:
                    self.say(f"stopped {part.name}")
            except KeyboardInterrupt:
                for rest in self.parts:
                    rest.signal_group(signal.SIGKILL)
                for rest in self.parts:
                    rest.process.wait()
                raise

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()

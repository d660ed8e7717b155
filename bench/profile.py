"""Where a process spends its CPU: py-spy samples of a running process, summed by function.

    with Sampler(pid, output) as sampler: ...     # py-spy record --format raw while the block runs
    print(top_table(read_collapsed(output)))      # self and inclusive share of on-CPU samples

py-spy (`pip install py-spy`) is a development tool, not a dependency: `available()` says whether it is on
PATH (or beside this interpreter). Idle threads are not sampled: shares are of the CPU the process used.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def available() -> bool:
    return py_spy() is not None


class Sampler:
    """`py-spy record` of one process while the `with` block runs (C code shows as its Python caller)."""

    def __init__(self, pid: int, output: Path, rate: int = 200) -> None:
        self.command = [
            py_spy() or "py-spy",
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(output),
        ]
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Sampler:
        self.proc = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            self.proc.wait(60)


def read_collapsed(path: Path) -> Counter[tuple[str, ...]]:
    """Stacks (outermost first) -> sample counts, from py-spy's raw (collapsed) format."""
    stacks: Counter[tuple[str, ...]] = Counter()
    if not path.exists():
        return stacks
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(_short(f) for f in stack.split(";"))] += int(count)
    return stacks


def _short(frame: str) -> str:
    """`function (path/to/module.py:123)` -> `function (module.py)`: lines split one function in many."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({os.path.basename(where)})" if where else name


def top_table(stacks: Counter[tuple[str, ...]], limit: int = 25) -> str:
    total = sum(stacks.values())
    if not total:
        return "no samples"
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for stack, count in stacks.items():
        own[stack[-1]] += count
        for frame in set(stack):
            inclusive[frame] += count
    lines = [f"{total} samples; inclusive share (self share), top {limit} by inclusive"]
    for frame, count in inclusive.most_common(limit):
        lines.append(f"{100 * count / total:6.1f}% ({100 * own[frame] / total:5.1f}%)  {frame}")
    lines.append(f"top {limit // 2} by self share")
    for frame, count in own.most_common(limit // 2):
        lines.append(f"{100 * count / total:6.1f}%  {frame}")
    return "\n".join(lines)

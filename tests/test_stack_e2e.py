"""`make up`'s runner end to end, with the real parts: a Cassandra node, mnist-serve and the gateway, on free
ports, serving the model the test fixtures export (so nothing trains for minutes here).

Run 1 (fresh state): ready, a prediction over HTTP lands in Cassandra, Ctrl-C stops every process and frees
every port. Run 2 (same state, warm): the earlier prediction is still there; then a part is killed and the
runner reports it and stops the rest instead of leaving half a stack."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from deploy.local.readiness import port_free
from tests.test_stack_runner import free_port

pytestmark = pytest.mark.slow
READY_TIMEOUT_S = 900  # a cold Cassandra start on a busy 2-core CI machine, plus the first mnist-serve load


class StackRun:
    """`python -m deploy.local.stack` as a user runs it (own session, like a terminal's foreground job)."""

    def __init__(self, repo_root: Path, state_dir: Path, models: Path, ports: dict[str, int]):
        self.ports = ports
        self.lines: list[str] = []
        self.ready = threading.Event()
        args = [sys.executable, "-m", "deploy.local.stack", "--state-dir", str(state_dir)]
        for name, port in ports.items():
            args += [f"--{name}-port", str(port)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CASSANDRA_", "GATEWAY_", "MODEL_"))}
        env["MODEL_BASE_PATH"] = str(models)
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            args,
            cwd=repo_root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("stack     | ready in "):
                self.ready.set()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self) -> float:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.ready.wait(0.5):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the stack did not become ready:\n{self.output[-6000:]}")
        return time.monotonic() - self.started

    def descendants(self) -> set[int]:
        """Every process below the runner (read from /proc: no helper library)."""
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(") ", 1)[1].split()
            except (OSError, IndexError):
                continue
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        found, todo = set(), [self.process.pid]
        while todo:
            for child in children.get(todo.pop(), []):
                found.add(child)
                todo.append(child)
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.reader.join(10)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def digit_png(mnist_dir: Path, index: int) -> tuple[bytes, int]:
    with gzip.open(mnist_dir / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(mnist_dir / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    buffer = io.BytesIO()
    Image.fromarray(images[index]).save(buffer, format="PNG")
    return buffer.getvalue(), int(labels[index])


@pytest.fixture
def stack_ports() -> dict[str, int]:
    return {"gateway": free_port(), "grpc": free_port(), "rest": free_port(), "cassandra": free_port()}


def test_make_up_runs_the_whole_stack_and_stops_cleanly(
    repo_root, tmp_path, model_base_path, mnist_dir, stack_ports
):
    models = tmp_path / "models"
    shutil.copytree(model_base_path, models)
    state = tmp_path / "state"
    url = f"http://127.0.0.1:{stack_ports['gateway']}"

    # -- run 1: fresh state ----------------------------------------------------------------------------
    run = StackRun(repo_root, state, models, stack_ports)
    try:
        fresh_s = run.wait_ready()
        image, _label = digit_png(mnist_dir, 0)
        answer = requests.post(
            f"{url}/v1/predict", files={"image": ("first.png", image, "image/png")}, timeout=30
        )
        assert answer.status_code == 200, answer.text
        first = answer.json()
        assert first["model"]["name"] == "mnist" and first["model"]["version"] == 1
        assert 0 <= first["digit"] <= 9
        legacy = requests.post(f"{url}/mnist", files={"pic": ("legacy.png", image, "image/png")}, timeout=30)
        assert legacy.status_code == 200 and f"Pred: {first['digit']}" in legacy.text
        for part in ("cassandra |", "serve     |", "gateway   |"):
            assert any(line.startswith(part) for line in run.lines), part
        assert (state / "logs" / "gateway.log").stat().st_size > 0
        processes = run.descendants()
        assert len(processes) >= 4  # three parts, Cassandra's JVM, the gateway's worker
    finally:
        if run.process.poll() is None:
            os.killpg(run.process.pid, signal.SIGINT)  # Ctrl-C in the terminal
        try:
            run.process.wait(180)
        finally:
            run.stop()
    assert run.process.returncode == 0, run.output[-4000:]
    assert run.lines[-1] == "stack     | stopped; nothing left running"
    assert not {pid for pid in processes if alive(pid)}
    for name, port in stack_ports.items():
        assert port_free("127.0.0.1", port), f"{name} port {port} still taken"

    # -- run 2: warm state; the data survived; a dying part stops the stack --------------------------------
    run = StackRun(repo_root, state, models, stack_ports)
    try:
        warm_s = run.wait_ready()
        stored = requests.get(f"{url}/v1/predictions/{first['id']}", timeout=30)
        assert stored.status_code == 200, stored.text
        assert stored.json()["filename"] == "first.png"
        serve = next(
            pid for pid in run.descendants() if b"mnist-serve" in Path(f"/proc/{pid}/cmdline").read_bytes()
        )
        os.kill(serve, signal.SIGKILL)
        run.process.wait(180)
    finally:
        run.stop()
    assert run.process.returncode == 1
    assert "stack     | error: serve exited with code -9" in run.output
    assert "stack     | stopping the rest of the stack" in run.output
    for name, port in stack_ports.items():
        assert port_free("127.0.0.1", port), f"{name} port {port} still taken"
    print(f"\nmake up time to ready: fresh state {fresh_s:.1f} s, warm state {warm_s:.1f} s")

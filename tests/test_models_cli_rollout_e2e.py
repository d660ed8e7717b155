"""`mnist-models rollout` end to end: the real CLI (a subprocess) drives the real `mnist-gateway` over HTTP,
which routes real MNIST test images to a real `mnist-serve` and counts them in a real Cassandra node.

Under steady load (a client thread sending test images, with feedback for every other answer, counting every
answer that is not a 2xx), with versions exported by the training code:
- a good version rolls out in short steps to 100 % and is promoted;
- a bad version (trained on shuffled labels) is refused by the metrics.json gate, and with --force it is
  rolled back by the live guards: feedback accuracy without shadow traffic, agreement with it (the same
  model as another version, whose counters start from zero);
- no request fails throughout, and the scorecard counts exactly what the client sent;
- a driver killed with SIGKILL leaves the gateway all-stable once its lease lapses; `--resume` picks the
  rollout up, `--abort` ends it, SIGTERM rolls back.

The stack is this module's own (model name `rollout_e2e`), so its counters and rollout rows are apart from
every other test's in the session's Cassandra.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.fixtures.gateway_server import OPS_TOKEN, GatewayProcess, gateway_environment
from tests.fixtures.model_server import ModelServerProcess, models_config_text
from tests.waiting import eventually

MODEL = "rollout_e2e"
# Distinct X-Client-Id values: the sticky split sends about canary_percent % of them to canary. Prime, so
# that over the 200 images every client sends every image: with 100, client k would only ever send images k
# and k + 100, and the canary's clients would be judged on other digits than stable's.
CLIENTS = 97
# Short polls and small evidence thresholds (the guards' arithmetic is tested in test_models_cli_rollout.py).
FAST = [
    "--poll-seconds", "0.5",
    "--min-requests", "10",
    "--min-compared", "20",
    "--min-labels", "20",
    # A shared 2-core machine makes latency noisy; the latency guard is not what these rollouts test.
    "--p99-slack-ms", "5000",
    "--min-accuracy", "0.9",
]  # fmt: skip


def upload(image: np.ndarray) -> bytes:
    """An MNIST digit as a user sends it: dark ink on a light, larger canvas (the gateway normalises it)."""
    picture = Image.fromarray(255 - image).resize((112, 112), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


class Load:
    """A client thread sending test images through the gateway, with the true label as feedback for every
    other answer. It counts what it got: answers by version and routing, labels sent by version, failures."""

    def __init__(self, url: str, images: list[bytes], labels: list[int]) -> None:
        self.url = url
        self.images, self.labels = images, labels
        self.answers: Counter[int] = Counter()
        self.routing: Counter[tuple[int, str]] = Counter()
        self.feedback: Counter[int] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def snapshot(self) -> tuple[Counter, Counter]:
        with self._lock:
            return Counter(self.answers), Counter(self.routing)

    def _run(self) -> None:
        session = requests.Session()
        for n in itertools.count():
            if self._stop.is_set():
                return
            i = n % len(self.images)
            headers = {"X-Client-Id": f"client-{n % CLIENTS}", "Content-Type": "image/png"}
            try:
                r = session.post(f"{self.url}/v1/predict", data=self.images[i], headers=headers, timeout=30)
                if r.status_code != 200:
                    self._fail(f"predict {r.status_code}: {r.text[:200]}")
                    continue
                answer = r.json()
                version, routing = int(answer["model"]["version"]), answer["model"]["routing"]
                with self._lock:
                    self.answers[version] += 1
                    self.routing[(version, routing)] += 1
                if n % 2:
                    continue
                f = session.post(
                    f"{self.url}/v1/predictions/{answer['id']}/feedback",
                    json={"label": self.labels[i]},
                    timeout=30,
                )
                if f.status_code != 200:
                    self._fail(f"feedback {f.status_code}: {f.text[:200]}")
                    continue
                with self._lock:
                    self.feedback[version] += 1
            except (requests.RequestException, ValueError, KeyError) as error:
                self._fail(f"{type(error).__name__}: {error}")

    def _fail(self, what: str) -> None:
        with self._lock:
            self.failures.append(what)

    def no_failures(self) -> None:
        with self._lock:
            assert not self.failures, self.failures[:5]

    def wait_for_answers(self, version: int, routing: str, more_than: int = 0) -> None:
        eventually(
            lambda: self.snapshot()[1][(version, routing)] > more_than,
            what=f"answers by version {version} ({routing})",
            timeout_s=60,
            alive=self.no_failures,
        )


class Stack:
    def __init__(self, root: Path, cassandra_node, keyspace: str) -> None:
        self.root = root
        self.base_path = root / "models"
        self.model_dir = self.base_path / MODEL
        self.config = root / "models.config"
        self.cassandra_node, self.keyspace = cassandra_node, keyspace
        self.server: ModelServerProcess | None = None
        self.gateway: GatewayProcess | None = None

    def start(self) -> None:
        self.config.write_text(models_config_text(self.base_path, model_name=MODEL))
        self.server = ModelServerProcess(
            self.base_path, self.config, self.root / "mnist-serve.log", model_name=MODEL
        ).start()
        env = gateway_environment(
            self.server, self.cassandra_node, self.keyspace, self.root / "spool", MODEL_NAME=MODEL
        )
        self.gateway = GatewayProcess(env, self.root / "gateway.log").start()

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        if self.server is not None:
            self.server.stop()

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "MODEL_SERVER_GRPC": self.server.grpc_address,
            "MODEL_CONFIG_FILE": str(self.config),
            "MODEL_BASE_PATH": str(self.base_path),
            "MODEL_NAME": MODEL,
            "GATEWAY_URL": self.gateway.url,
            "OPS_TOKEN": OPS_TOKEN,
        }

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(Path(sys.executable).parent / "mnist-models"), *args],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
            cwd=self.root,
        )

    def start_cli(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "mnist-models"), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(),
            cwd=self.root,
        )

    def rollout_state(self) -> dict:
        r = requests.get(f"{self.gateway.url}/v1/models/{MODEL}/rollout", timeout=10)
        r.raise_for_status()
        return r.json()

    def scorecard(self) -> dict:
        r = requests.get(f"{self.gateway.url}/v1/models/{MODEL}/scorecard?window=3600", timeout=10)
        r.raise_for_status()
        return r.json()


def export_bad_version(base_path: Path) -> Path:
    """A version trained by the project's trainer on the committed sample with shuffled labels: it answers
    confidently and is wrong nine times in ten. Its metrics.json says so (about 0.1 test accuracy)."""
    from tests.fixtures.models import WARMUP_IMAGES, _mnist, quick_hyper_params
    from training.export import export_version
    from training.model import train
    from training.report import evaluate_model

    data = _mnist()
    hp = dataclasses.replace(quick_hyper_params(), epochs=1)
    shuffled = np.random.default_rng(12).permutation(data.train_labels)
    model, result = train(hp, data.train_images, shuffled, verbose=0)
    metrics = evaluate_model(model, data, hp, result)
    return export_version(
        model, base_path, MODEL, metrics=metrics, warmup_images=data.test_images[:WARMUP_IMAGES]
    )


@pytest.fixture(scope="module")
def stack(cassandra_node, cassandra_keyspace, tmp_path_factory, mnist_dir):
    from tests.fixtures.models import export_quick_version

    root = tmp_path_factory.mktemp("rollout")
    stack = Stack(root, cassandra_node, cassandra_keyspace)

    def copy(source: int, version: int) -> None:  # written aside and renamed like an export (faster)
        shutil.copytree(stack.model_dir / str(source), stack.model_dir / f".tmp-{version}")
        (stack.model_dir / f".tmp-{version}").rename(stack.model_dir / str(version))

    # 1: stable at the start; 2 and 4: good new versions; 3: bad; 5: bad again (a version of its own, so
    # its counters start from zero).
    assert export_quick_version(stack.base_path, MODEL) == stack.model_dir / "1"
    copy(1, 2)
    assert export_bad_version(stack.base_path) == stack.model_dir / "3"
    copy(1, 4)
    copy(3, 5)
    stack.start()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def test_images(mnist_dir) -> tuple[list[bytes], list[int]]:
    from training.data import load_mnist

    data = load_mnist(mnist_dir)
    return [upload(image) for image in data.test_images[:200]], [int(x) for x in data.test_labels[:200]]


def finished(result: subprocess.CompletedProcess, code: int) -> str:
    assert result.returncode == code, f"exit {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def test_a_good_version_is_promoted_and_a_bad_one_rolled_back_without_a_failed_request(stack, test_images):
    images, labels = test_images
    with Load(stack.gateway.url, images, labels) as load:
        load.wait_for_answers(1, "stable", more_than=20)

        # 1. A good version: 10 %, 50 %, 100 %, 2 s each, then promoted.
        output = finished(stack.cli("rollout", "2", "--steps", "10,50,100", "--step-seconds", "2", *FAST), 0)
        assert "step 3/3: 100 % to version 2" in output
        assert "promoted version 2: stable 1 -> 2; split back to 0 %" in output
        answers, routing = load.snapshot()
        assert routing[(2, "canary")] > 0, "version 2 answered split traffic during the rollout"
        state = stack.rollout_state()
        assert state["state"]["status"] == "promoted" and state["effective"]["canary_percent"] == 0
        assert [e["action"] for e in state["events"]][:4] == ["promote", "step", "step", "start"]
        assert all("@" in e["actor"] for e in state["events"])
        load.wait_for_answers(2, "stable", more_than=routing[(2, "stable")] + 10)

        # 2. The bad version's own metrics.json stops it before any traffic moves.
        error = finished(stack.cli("rollout", "3", *FAST), 6)
        assert "version 3: test accuracy 0." in error and "refusing" in error
        assert stack.rollout_state()["state"]["status"] == "promoted"

        # 3. Forced past that gate, without shadow copies: the feedback accuracy guard rolls it back.
        no_shadow = ["--steps", "50,100", "--step-seconds", "120", "--no-shadow", "--force"]
        error = finished(stack.cli("rollout", "3", *no_shadow, *FAST), 11)
        assert "guard feedback_accuracy failed: canary 0." in error and "below stable" in error
        state = stack.rollout_state()["state"]
        assert state["status"] == "rolled_back" and state["reason"].startswith(
            "guard feedback_accuracy failed"
        )
        assert stack.rollout_state()["effective"]["canary_percent"] == 0

        # 4. With shadow copies, agreement with stable catches the same model (as version 5, with no labels
        # yet) long before 5 % of the traffic brings in enough labels.
        shadow = ["--steps", "5,100", "--step-seconds", "120", "--shadow", "--force"]
        error = finished(stack.cli("rollout", "5", *shadow, *FAST), 11)
        assert "guard agreement failed: 0." in error and "pairs with version 2" in error
        assert stack.rollout_state()["state"]["reason"].startswith("guard agreement failed")
        before = load.snapshot()[1][(2, "stable")]
        load.wait_for_answers(2, "stable", more_than=before + 10)

    assert load.failures == [], load.failures[:5]
    answers, _ = load.snapshot()
    assert set(answers) == {1, 2, 3, 5}

    def counted_as_sent() -> bool:
        versions = {v["version"]: v for v in stack.scorecard()["versions"]}
        return all(
            v in versions
            and versions[v]["requests"] == answers[v]
            and versions[v]["errors"] == 0
            and versions[v]["feedback"]["labels"] == load.feedback[v]
            for v in answers
        )

    eventually(
        counted_as_sent, what="the scorecard counting what the client sent", timeout_s=90, interval_s=1
    )
    table = finished(stack.cli("scorecard", "--window", "3600"), 0)
    assert table.splitlines()[1].split()[0] == "VERSION"


def test_a_killed_driver_leaves_all_stable_then_resume_and_abort(stack, test_images):
    images, labels = test_images
    long = ["--steps", "50,100", "--step-seconds", "600", "--shadow", *FAST]
    with Load(stack.gateway.url, images, labels) as load:
        driver = stack.start_cli("rollout", "4", *long)
        try:
            eventually(
                lambda: stack.rollout_state()["effective"]["canary_percent"] == 50,
                what="the split at 50 %",
                timeout_s=120,
            )
            load.wait_for_answers(4, "canary")
        finally:
            driver.send_signal(signal.SIGKILL)
            driver.communicate(timeout=30)

        # The lease lapses: the stored rollout still says running, the gateway applies nothing.
        eventually(
            lambda: stack.rollout_state()["effective"]["canary_percent"] == 0,
            what="the lease lapsing",
            timeout_s=60,
        )
        assert stack.rollout_state()["state"]["status"] == "running"
        # The load is one thread: once one more answer arrives, the request that was in flight when the lease
        # lapsed (routed before it) has ended too.
        lapsed = load.snapshot()[1]
        load.wait_for_answers(2, "stable", more_than=lapsed[(2, "stable")])
        before = load.snapshot()[1]
        load.wait_for_answers(2, "stable", more_than=before[(2, "stable")] + 20)
        assert load.snapshot()[1][(4, "canary")] == before[(4, "canary")], "no split after the lease lapsed"

        # A new rollout is refused while the interrupted one is stored.
        error = finished(stack.cli("rollout", "4", *long), 10)
        assert "interrupted rollout of version 4" in error and "--resume or --abort" in error

        # --resume picks it up at its step; --abort (another process) ends it and the driver stops.
        resumed = stack.start_cli("rollout", "--resume", *FAST)
        try:
            eventually(
                lambda: stack.rollout_state()["effective"]["canary_percent"] == 50,
                what="the resumed split",
                timeout_s=120,
            )
            assert stack.rollout_state()["events"][0]["action"] == "resume"
            aborted = finished(stack.cli("rollout", "--abort"), 0)
            assert "aborted the rollout of version 4" in aborted
            out, err = resumed.communicate(timeout=60)
        finally:
            if resumed.poll() is None:
                resumed.kill()
                resumed.communicate()
        assert resumed.returncode == 10, err
        assert "aborted by" in err
        state = stack.rollout_state()
        assert state["state"]["status"] == "aborted" and state["effective"]["canary_percent"] == 0
        assert "nothing to abort" in finished(stack.cli("rollout", "--abort"), 0)
        assert "no interrupted rollout" in finished(stack.cli("rollout", "--resume"), 13)

        # SIGTERM rolls back at once, like a failed guard.
        driver = stack.start_cli("rollout", "4", *long)
        try:
            eventually(
                lambda: stack.rollout_state()["effective"]["canary_percent"] == 50,
                what="the split at 50 % again",
                timeout_s=120,
            )
            driver.send_signal(signal.SIGTERM)
            out, err = driver.communicate(timeout=60)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.communicate()
        assert driver.returncode == 12, err
        assert "interrupted by SIGTERM" in err
        state = stack.rollout_state()
        assert state["state"]["status"] == "rolled_back" and state["effective"]["canary_percent"] == 0
        status = finished(stack.cli("rollout", "--status"), 0)
        assert "rolled_back" in status and "effective now: 0 % to canary" in status
        assert (
            json.loads(finished(stack.cli("rollout", "--status", "--json"), 0))["state"]["status"]
            == "rolled_back"
        )
    assert load.failures == [], load.failures[:5]

"""`mnist-models` end to end: the real CLI (a subprocess) against a real `mnist-serve` over gRPC, with
versions exported by the real training code. What the server does is checked with the official
tensorflow-serving-api stubs: GetModelStatus, and Predict by label (the answering version is the label's).

The server gets its own copy of the config, read once at start (no file polling): every change it sees came
through HandleReloadConfigRequest. The tests run in order; each states the labels it starts from.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from deploy.local.readiness import free_port
from tests.fixtures.models import export_quick_version

REPO = Path(__file__).resolve().parents[1]
GOOD_ACCURACY = 0.995  # written into the metrics.json of the versions meant to pass the gate


def set_accuracy(version_dir: Path, accuracy: float) -> None:
    metrics_path = version_dir / "assets.extra" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["test_accuracy"] = accuracy
    metrics_path.write_text(json.dumps(metrics))


class Stack:
    """A model base path with versions, a config file, and an mnist-serve process serving them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.base_path = root / "models"
        self.model_dir = self.base_path / "mnist"
        self.config = root / "serving" / "models.config"
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.log = root / "mnist-serve.log"
        self.channel: grpc.Channel | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "serving.local_server",
            f"--port={self.port}",
            "--rest_api_port=0",
            f"--model_config_file={self.config}",
            "--allow_version_labels_for_unavailable_models=true",
            "--file_system_poll_wait_seconds=1",
            "--log_format=text",
        ]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.process = subprocess.Popen(argv, stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env=env)
        self.channel = grpc.insecure_channel(self.address)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mnist-serve exited: {self.log.read_text()[-2000:]}")
            try:
                if self.states().get(1) == "AVAILABLE":
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"mnist-serve not ready: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    # -- the official stubs --

    def states(self) -> dict[int, str]:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "mnist"
        stub = model_service_pb2_grpc.ModelServiceStub(self.channel)
        response = stub.GetModelStatus(request, timeout=5)
        names = get_model_status_pb2.ModelVersionStatus.State.Name
        return {s.version: names(s.state) for s in response.model_version_status}

    def predict_version(self, label: str) -> int:
        """The version that answers a Predict addressed to `label`."""
        import tensorflow as tf

        request = predict_pb2.PredictRequest()
        request.model_spec.name = "mnist"
        request.model_spec.signature_name = "serving_default"
        request.model_spec.version_label = label
        request.inputs["image"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 28, 28), np.uint8)))
        response = prediction_service_pb2_grpc.PredictionServiceStub(self.channel).Predict(
            request, timeout=10
        )
        assert tf.make_ndarray(response.outputs["probabilities"]).shape == (1, 10)
        return response.model_spec.version.value

    # -- the CLI --

    def cli(self, *args: str, server: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
        env = {
            **os.environ,
            "MODEL_SERVER_GRPC": server or self.address,
            "MODEL_CONFIG_FILE": str(self.config),
            "MODEL_BASE_PATH": str(self.base_path),
        }
        script = str(Path(sys.executable).parent / "mnist-models")
        return subprocess.run(
            [script, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
            cwd=self.root,
        )

    def file_labels(self) -> dict[str, int]:
        from serving.ops import model_config
        from serving.ops.config_file import ConfigFile

        return model_config.labels(ConfigFile(self.config).read(), "mnist")

    def file_versions(self) -> list[int]:
        from serving.ops import model_config
        from serving.ops.config_file import ConfigFile

        return model_config.versions(ConfigFile(self.config).read(), "mnist")


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stdout}{result.stderr}"
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess, exit_code: int) -> str:
    assert result.returncode == exit_code, f"exit {result.returncode}: {result.stdout}{result.stderr}"
    lines = result.stderr.rstrip().splitlines()
    # progress lines ("  version 5: LOADING (0.1s)") may come first; the error is one line, the last
    errors = [line for line in lines if line.startswith("mnist-models: error: ")]
    assert errors == lines[-1:], result.stderr
    assert all(line.startswith("  version ") for line in lines[:-1]), result.stderr
    return errors[0]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("ops")
    stack = Stack(root)
    assert export_quick_version(stack.base_path) == stack.model_dir / "1"
    for version in (2, 3, 4):  # copies (written aside, then renamed, like an export): exporting is slower
        shutil.copytree(stack.model_dir / "1", stack.model_dir / f".tmp-{version}")
        (stack.model_dir / f".tmp-{version}").rename(stack.model_dir / str(version))
    # The quick model scores ~0.95: versions 2 and 3 get a passing score, 1 and 4 keep the real one.
    for version in (2, 3):
        set_accuracy(stack.model_dir / str(version), GOOD_ACCURACY)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving.ops.cli",
            "--config",
            str(REPO / "serving" / "models.config"),
            "render-config",
            "--base-path",
            str(stack.base_path),
            "--out",
            str(stack.config),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    ok(result)
    stack.start()
    yield stack
    stack.stop()


def test_list_joins_disk_config_and_server(stack):
    listing = json.loads(ok(stack.cli("list", "--json")))
    rows = {row["version"]: row for row in listing["versions"]}
    assert sorted(rows) == [1, 2, 3, 4]
    assert rows[2]["accuracy"] == GOOD_ACCURACY
    assert rows[4]["accuracy"] < 0.99
    assert sorted(rows[1]["labels"]) == ["canary", "stable"]
    assert (rows[1]["listed"], rows[1]["state"]) == (True, "AVAILABLE")
    assert (rows[2]["listed"], rows[2]["state"]) == (False, "-")
    table = ok(stack.cli("list"))
    header, *lines = table.splitlines()
    assert header.split() == ["VERSION", "TEST", "ACC", "CREATED", "LOADED", "STATE", "LABELS"]
    assert lines[0].split()[0] == "1" and lines[0].split()[-1] == "canary,stable"


def test_status_shows_where_the_server_resolves_each_label(stack):
    status = json.loads(ok(stack.cli("status", "--json")))
    assert [(v["version"], v["state"]) for v in status["versions"]] == [(1, "AVAILABLE")]
    assert {x["label"]: (x["config"], x["server"], x["in_sync"]) for x in status["labels"]} == {
        "stable": (1, 1, True),
        "canary": (1, 1, True),
    }
    assert "stable" in ok(stack.cli("status"))


def test_promote_refuses_a_version_below_the_accuracy_gate(stack):
    before = stack.config.read_bytes()
    error = one_line_error(stack.cli("promote", "4"), 6)
    assert "test accuracy 0.9" in error and "--force" in error
    assert stack.config.read_bytes() == before
    assert stack.states() == {1: "AVAILABLE"}, "a refused version is not even loaded"


def test_promote_of_a_missing_version_is_an_error(stack):
    before = stack.config.read_bytes()
    error = one_line_error(stack.cli("promote", "9"), 5)
    assert "version 9 not found" in error and "1, 2, 3, 4" in error
    assert stack.config.read_bytes() == before


def test_promote_loads_the_version_then_moves_stable(stack):
    assert stack.predict_version("stable") == 1
    output = ok(stack.cli("promote", "2"))
    assert "loading version 2" in output and "stable: 1 -> 2" in output
    assert stack.states() == {1: "AVAILABLE", 2: "AVAILABLE"}, "the previous stable stays loaded"
    assert stack.predict_version("stable") == 2
    assert stack.predict_version("canary") == 1
    assert stack.file_labels() == {"canary": 1, "stable": 2}
    assert stack.file_versions() == [1, 2]
    history = json.loads(stack.config.with_name("models.config.history.json").read_text())
    assert history["models"]["mnist"]["previous_stable"] == [1]
    assert ok(stack.cli("promote", "2")).strip() == "stable already points at version 2; nothing to do"


def test_canary_points_the_canary_label_only(stack):
    output = ok(stack.cli("canary", "3"))
    assert "canary: 1 -> 3" in output
    assert stack.predict_version("canary") == 3
    assert stack.predict_version("stable") == 2
    assert stack.states()[3] == "AVAILABLE"


def test_force_overrides_the_gate(stack):
    output = ok(stack.cli("canary", "4", "--force", "--min-accuracy", "0.99"))
    assert "going ahead because of --force" in output
    assert stack.predict_version("canary") == 4


def test_rollback_returns_stable_to_the_previous_version(stack):
    assert stack.predict_version("stable") == 2
    assert "stable: 2 -> 1 (rolled back)" in ok(stack.cli("rollback"))
    assert stack.predict_version("stable") == 1
    assert stack.file_labels()["stable"] == 1
    error = one_line_error(stack.cli("rollback"), 8)
    assert "no earlier stable version" in error
    assert stack.predict_version("stable") == 1


def test_retire_unloads_unlabelled_versions(stack):
    # stable 1, canary 4; 2 and 3 are loaded but unlabelled (and no rollback target is left)
    assert "retired version(s) 2, 3" in ok(stack.cli("retire"))
    assert stack.file_versions() == [1, 4]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(stack.states().get(v) != "END" for v in (2, 3)):
        time.sleep(0.2)
    states = stack.states()
    assert (states[1], states[2], states[3], states[4]) == ("AVAILABLE", "END", "END", "AVAILABLE")
    assert stack.predict_version("stable") == 1 and stack.predict_version("canary") == 4


def test_a_retired_version_is_loaded_again_when_promoted(stack):
    ok(stack.cli("promote", "3"))
    assert stack.predict_version("stable") == 3
    assert stack.file_versions() == [1, 3, 4]


def test_a_version_that_fails_to_load_leaves_config_and_labels_alone(stack):
    broken = stack.model_dir / "5"
    shutil.copytree(stack.model_dir / "2", broken)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    before = stack.config.read_bytes()
    error = one_line_error(stack.cli("promote", "5", "--load-timeout", "60"), 7)
    assert "version 5 of mnist failed to load" in error and "previous config restored" in error
    assert stack.config.read_bytes() == before
    assert stack.predict_version("stable") == 3
    shutil.rmtree(broken)


def test_a_listed_version_that_failed_to_load_is_reported_at_once(stack):
    """Someone listed a broken version by hand: moving a label to it fails now, not after --load-timeout."""
    from serving.ops import model_config
    from serving.ops.config_file import ConfigFile
    from serving.ops.server import ModelServerClient

    broken = stack.model_dir / "6"
    shutil.copytree(stack.model_dir / "2", broken)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    config_file = ConfigFile(stack.config)
    pushed = config_file.read()
    with_broken = model_config.with_versions(pushed, "mnist", [*model_config.versions(pushed, "mnist"), 6])
    with ModelServerClient(stack.address) as client:
        config_file.write(with_broken)
        client.reload(with_broken)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not client.version_states("mnist").get(6, None):
            time.sleep(0.1)
        while time.monotonic() < deadline and client.version_states("mnist")[6].state != "END":
            time.sleep(0.1)
        try:
            error = one_line_error(stack.cli("canary", "6", "--force", "--load-timeout", "120"), 7)
            assert "version 6 is listed but failed to load" in error
            assert stack.file_labels() == model_config.labels(pushed, "mnist")
        finally:
            config_file.write(pushed)
            client.reload(pushed)
            shutil.rmtree(broken)


def test_an_unreachable_server_is_a_one_line_error(stack):
    before = stack.config.read_bytes()
    error = one_line_error(stack.cli("promote", "2", server=f"127.0.0.1:{free_port()}"), 4)
    assert "unreachable" in error
    assert stack.config.read_bytes() == before


def test_a_server_that_never_answers_hits_the_deadline(stack):
    """A socket that accepts connections but never speaks gRPC: the call ends at the deadline, not never."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        result = stack.cli(
            "--timeout", "1", "status", server=f"127.0.0.1:{listener.getsockname()[1]}", timeout=60
        )
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()
    error = one_line_error(result, 4)
    assert "did not answer GetModelStatus within 1s" in error, error
    assert elapsed < 30


def test_a_bad_config_file_is_a_one_line_error(stack, tmp_path):
    broken = tmp_path / "models.config"
    broken.write_text("model_config_list { config { name: 'mnist' base_path: ")
    error = one_line_error(stack.cli("--config", str(broken), "promote", "2"), 3)
    assert "is not a ModelServerConfig" in error
    error = one_line_error(stack.cli("--config", str(tmp_path / "missing.config"), "status"), 3)
    assert "not found" in error
    latest = tmp_path / "latest.config"
    latest.write_text(f"model_config_list {{ config {{ name: 'mnist' base_path: '{stack.model_dir}' }} }}")
    error = one_line_error(stack.cli("--config", str(latest), "canary", "2"), 3)
    assert "specific" in error


def test_list_without_the_model_directory_shows_file_and_server_then_fails(stack, tmp_path):
    result = stack.cli("list", "--json", "--model-base-path", str(tmp_path / "nowhere"))
    assert "model directory" in one_line_error(result, 3)
    rows = {row["version"]: row for row in json.loads(result.stdout)["versions"]}
    listed = {v for v, row in rows.items() if row["listed"]}
    assert listed == set(stack.file_versions())
    assert all(rows[v]["state"] == "AVAILABLE" for v in listed)
    assert not any(row["on_disk"] for row in rows.values())


def test_concurrent_changes_are_serialised(stack):
    """Two operators at once: both succeed one after the other, and file and server agree at the end."""
    commands = [["canary", "2"], ["promote", "4", "--force"]]
    results: list[subprocess.CompletedProcess] = [None, None]  # type: ignore[list-item]

    def run(i: int) -> None:
        results[i] = stack.cli(*commands[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        ok(result)
    assert stack.file_labels() == {"canary": 2, "stable": 4}
    assert stack.predict_version("canary") == 2
    assert stack.predict_version("stable") == 4
    assert {2, 3, 4} <= set(stack.file_versions())
    assert sorted(p.name for p in stack.config.parent.iterdir()) == [
        "models.config",
        "models.config.history.json",
        "models.config.lock",
    ]


def test_help_everywhere(stack):
    for command in (
        [],
        ["list"],
        ["status"],
        ["promote"],
        ["canary"],
        ["rollback"],
        ["retire"],
        ["render-config"],
        ["check"],
    ):
        result = stack.cli(*command, "--help")
        assert result.returncode == 0 and result.stdout.startswith("usage: mnist-models"), command
    bad = stack.cli("promote", "two")
    assert bad.returncode == 2 and "a version is a positive integer" in bad.stderr


def test_status_flags_a_label_the_server_resolves_differently(stack):
    """A hand edit that was never pushed: the file says one thing, the server another."""
    from serving.ops import model_config
    from serving.ops.config_file import ConfigFile

    config_file = ConfigFile(stack.config)
    pushed = config_file.read()
    stable = model_config.labels(pushed, "mnist")["stable"]
    other = next(v for v in model_config.versions(pushed, "mnist") if v != stable)
    config_file.write(model_config.with_label(pushed, "mnist", "stable", other))
    try:
        status = json.loads(ok(stack.cli("status", "--json")))
        labels = {x["label"]: x for x in status["labels"]}
        assert (labels["stable"]["config"], labels["stable"]["server"]) == (other, stable)
        assert labels["stable"]["in_sync"] is False and labels["canary"]["in_sync"] is True
        assert "OUT OF SYNC" in ok(stack.cli("status"))
    finally:
        config_file.write(pushed)


def test_a_restarted_server_serves_what_the_file_says(stack):
    """The file is the source of truth: after a restart the server comes back with the last pushed labels."""
    labels = stack.file_labels()
    stack.stop()
    unreachable = stack.cli("list")
    one_line_error(unreachable, 4)
    assert unreachable.stdout.splitlines()[0].split()[0] == "VERSION", "list still shows disk and file"
    stack.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(stack.states().get(v) != "AVAILABLE" for v in labels.values()):
        time.sleep(0.2)
    assert {label: stack.predict_version(label) for label in labels} == labels

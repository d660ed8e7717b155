"""`mnist-train` as users run it: a real process, real files, one-line errors and exit codes."""

from __future__ import annotations

import functools
import gzip
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from training.artifact import contract_violations
from training.data import SAMPLE_FILES, download, load_mnist

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "mnist-train"


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    base_env = {
        k: v for k, v in os.environ.items() if k not in ("MNIST_DATA_DIR", "MODEL_BASE_PATH", "MODEL_NAME")
    }
    return subprocess.run(
        [sys.executable, "-m", "training.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**base_env, **(env or {})},
        timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mnist-train") and "error" in lines[0]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_console_script_help():
    result = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for flag in ("--data-dir", "--model-base-path", "--model-name", "--epochs", "--batch-size", "--seed"):
        assert flag in result.stdout
    assert "evaluate" in result.stdout and "inspect" in result.stdout


@pytest.mark.parametrize("command", ["evaluate", "inspect"])
def test_subcommand_help(command):
    result = run(command, "--help")
    assert result.returncode == 0 and "version_dir" in result.stdout


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_retrain_job_help_prints_its_usage_and_runs_nothing(tmp_path, flag):
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "FEEDBACK_SNAPSHOT_DIR": str(tmp_path / "snapshots"),
        "CASSANDRA_PORT": "1",  # an export started by mistake would fail here
    }
    script = REPO / "training" / "mnist-retrain.sh"
    result = subprocess.run(["bash", str(script), flag], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage: mnist-retrain" in result.stdout and "RETRAIN_CANARY" in result.stdout
    assert result.stderr == "" and not (tmp_path / "snapshots").exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--epochs", "0"], "--epochs: must be at least 1"),
        (["--batch-size", "many"], "--batch-size: not an integer"),
        (["--seed", "-1"], "--seed: must not be negative"),
        (["--model-name", "../escape"], "invalid model name"),
        (["--no-such-flag"], "unrecognized arguments"),
        (["evaluate"], "version_dir"),
    ],
)
def test_bad_arguments(args, fragment):
    assert_one_line_error(run(*args), 2, fragment)


def test_no_data_dir(tmp_path):
    assert_one_line_error(run("--model-base-path", str(tmp_path)), 1, "--data-dir")


def test_missing_data_dir(tmp_path):
    result = run("--data-dir", str(tmp_path / "absent"), "--model-base-path", str(tmp_path))
    assert_one_line_error(result, 1, str(tmp_path / "absent"), "not found")


def test_data_dir_from_environment(tmp_path):
    result = run("--model-base-path", str(tmp_path), env={"MNIST_DATA_DIR": str(tmp_path / "from-env")})
    assert_one_line_error(result, 1, str(tmp_path / "from-env"))


def test_no_model_base_path(mnist_dir):
    assert_one_line_error(run("--data-dir", str(mnist_dir)), 1, "--model-base-path")


def test_model_base_path_is_a_file(mnist_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run("--data-dir", str(mnist_dir), "--model-base-path", str(blocker))
    assert_one_line_error(result, 1, "cannot create the model directory")


def test_corrupt_data_file(mnist_dir, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(mnist_dir, data_dir)
    broken = data_dir / "t10k-images-idx3-ubyte.gz"
    broken.chmod(0o644)
    broken.write_bytes(broken.read_bytes()[:100_000])
    result = run("--data-dir", str(data_dir), "--model-base-path", str(tmp_path / "models"))
    assert_one_line_error(result, 1, str(broken), "truncated")
    assert not (tmp_path / "models" / "mnist").exists() or not os.listdir(tmp_path / "models" / "mnist")


@pytest.fixture
def mirror_url(mnist_dir):
    """The tests' MNIST files over real HTTP on 127.0.0.1, standing in for the public mirror."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(mnist_dir)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_refuses_the_committed_sample(mnist_dir, mirror_url, tmp_path):
    if load_mnist(mnist_dir).dataset != "mnist-sample":
        pytest.skip("the mirror serves the full set (MNIST_DATA_DIR), which a download accepts")
    cache = tmp_path / "cache"
    models = str(tmp_path / "models")
    result = run(
        "--download",
        "--data-dir",
        str(cache),
        "--model-base-path",
        models,
        env={"MNIST_MIRROR_URL": mirror_url},
    )
    assert result.returncode == 1, result.stderr
    assert (
        "train-images-idx3-ubyte.gz: checksum mismatch after download" in result.stderr
    )  # after the progress
    assert "Traceback" not in result.stderr
    assert not list(cache.glob("*.gz"))


def test_download_train_and_export(mnist_dir, mirror_url, tmp_path):
    """Over real HTTP: download, train, export. `--download` accepts only the full set, so with the committed
    sample the same download code fetches it under the sample's checksums and the CLI trains on that cache."""
    cache, models = tmp_path / "cache", tmp_path / "models"
    if load_mnist(mnist_dir).dataset == "mnist":
        fetch = ["--download"]
    else:
        download(mirror_url, cache, expected=SAMPLE_FILES)
        fetch = []
    result = run(
        *fetch,
        "--data-dir",
        str(cache),
        "--model-base-path",
        str(models),
        "--model-name",
        "digits",
        "--epochs",
        "1",
        "--max-train-samples",
        "1000",
        "--batch-size",
        "64",
        "--seed",
        "3",
        env={"MNIST_MIRROR_URL": mirror_url},
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    version = models / "digits" / "1"
    assert f"exported {version}" in result.stdout
    assert "test_accuracy" in result.stdout
    assert sorted(p.name for p in cache.glob("*.gz")) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]
    assert contract_violations(version) == []
    assets = version / "assets.extra"
    for png in ("training_curves.png", "confusion_matrix.png"):
        assert (assets / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((assets / "metrics.json").read_text())
    assert metrics["hyper_parameters"]["batch_size"] == 64 and metrics["hyper_parameters"]["seed"] == 3
    assert metrics["train_samples"] == 1000 and len(metrics["history"]["loss"]) == 1


def test_evaluate_rescores_a_version(model_base_path, mnist_dir, quick_metrics):
    version = model_base_path / "mnist" / "1"
    result = run("evaluate", str(version), "--data-dir", str(mnist_dir), "--json")
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert scores["test_accuracy"] == pytest.approx(quick_metrics["test_accuracy"], abs=1e-4)
    assert scores["recorded_test_accuracy"] == quick_metrics["test_accuracy"]
    assert sum(map(sum, scores["confusion_matrix"])) == len(load_mnist(mnist_dir).test_labels)

    text = run("evaluate", str(version), env={"MNIST_DATA_DIR": str(mnist_dir)})
    assert text.returncode == 0, text.stderr
    assert f"test_accuracy {quick_metrics['test_accuracy']:.4f}" in text.stdout


def test_inspect_prints_the_signature(model_base_path):
    result = run("inspect", str(model_base_path / "mnist" / "1"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "signature_def['serving_default']:" in out
    assert "inputs['image'] tensor_info:\n        dtype: DT_UINT8\n        shape: (-1, 28, 28)" in out
    assert "outputs['probabilities'] tensor_info:\n        dtype: DT_FLOAT\n        shape: (-1, 10)" in out
    assert "outputs['digit'] tensor_info:\n        dtype: DT_INT64\n        shape: (-1)" in out
    assert "Method name is: tensorflow/serving/predict" in out
    assert "contract: ok" in out


@pytest.mark.parametrize("command", ["evaluate", "inspect"])
def test_not_a_version_dir(command, tmp_path, mnist_dir):
    result = run(command, str(tmp_path), env={"MNIST_DATA_DIR": str(mnist_dir)})
    assert_one_line_error(result, 1, "no saved_model.pb")


def test_inspect_corrupt_saved_model(model_base_path, tmp_path):
    version = tmp_path / "7"
    shutil.copytree(model_base_path / "mnist" / "1", version)
    (version / "saved_model.pb").write_bytes(gzip.compress(b"garbage"))
    assert_one_line_error(run("inspect", str(version)), 1, "corrupt SavedModel")

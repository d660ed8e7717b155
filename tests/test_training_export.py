"""The export contract: signature, warm-up records, metrics, PNGs, version numbering and atomicity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from tests.fixtures.models import QUICK_EPOCHS, QUICK_TRAIN_SAMPLES, export_quick_version
from tests.waiting import eventually
from training import export as export_module
from training.artifact import contract_violations
from training.data import load_mnist
from training.errors import ExportError


@pytest.fixture(scope="module")
def version_dir(model_base_path) -> Path:
    return model_base_path / "mnist" / "1"


@pytest.fixture(scope="module")
def test_images(mnist_dir) -> tuple[np.ndarray, np.ndarray]:
    mnist = load_mnist(mnist_dir)
    return mnist.test_images, mnist.test_labels


def _entries(model_dir: Path) -> list[str]:
    """What an export left in model_dir, apart from the lock file."""
    return (
        sorted(n for n in os.listdir(model_dir) if n != export_module.LOCK_FILE) if model_dir.exists() else []
    )


def test_layout(version_dir):
    assert (version_dir / "saved_model.pb").is_file()
    assert (version_dir / "variables").is_dir()
    assert (version_dir / "assets.extra" / "tf_serving_warmup_requests").is_file()
    assert (version_dir / "assets.extra" / "metrics.json").is_file()
    assert contract_violations(version_dir) == []


def test_serving_signature_contract(version_dir):
    serve = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    _, inputs = serve.structured_input_signature
    assert list(inputs) == ["image"]
    assert inputs["image"].dtype == tf.uint8 and inputs["image"].shape.as_list() == [None, 28, 28]
    outputs = serve.structured_outputs
    assert set(outputs) == {"probabilities", "digit"}
    assert outputs["probabilities"].dtype == tf.float32
    assert outputs["probabilities"].shape.as_list() == [None, 10]
    assert outputs["digit"].dtype == tf.int64 and outputs["digit"].shape.as_list() == [None]


def test_served_predictions_match_the_keras_model(version_dir, quick_keras_model, test_images):
    images, labels = test_images[0][:500], test_images[1][:500]
    result = tf.saved_model.load(str(version_dir)).signatures["serving_default"](image=tf.constant(images))
    probabilities = result["probabilities"].numpy()
    expected = np.asarray(quick_keras_model.predict(images, verbose=0))
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(result["digit"].numpy(), probabilities.argmax(axis=1))
    # The quick model is weak but far better than chance: the raw uint8 path normalises as in training.
    assert (result["digit"].numpy() == labels).mean() > 0.85


def test_warmup_records_parse_with_the_official_messages(version_dir, test_images):
    path = version_dir / "assets.extra" / "tf_serving_warmup_requests"
    records = list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    assert records
    batch_sizes = []
    for record in records:
        log = prediction_log_pb2.PredictionLog.FromString(record)
        assert log.WhichOneof("log_type") == "predict_log"
        request = log.predict_log.request
        assert request.model_spec.name == "mnist"
        assert request.model_spec.signature_name == "serving_default"
        assert list(request.inputs) == ["image"]
        array = tf.make_ndarray(request.inputs["image"])
        assert array.dtype == np.uint8 and array.shape[1:] == (28, 28)
        np.testing.assert_array_equal(array, test_images[0][: len(array)])
        batch_sizes.append(len(array))
    assert batch_sizes == sorted(batch_sizes) and batch_sizes[0] == 1


def test_metrics_json(version_dir, quick_metrics, mnist_dir):
    metrics = json.loads((version_dir / "assets.extra" / "metrics.json").read_text())
    mnist = load_mnist(mnist_dir)
    assert metrics["test_accuracy"] == quick_metrics["test_accuracy"]
    assert 0.85 < metrics["test_accuracy"] <= 1
    confusion = np.array(metrics["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == len(mnist.test_labels)
    assert metrics["test_accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum(), abs=1e-6)
    assert set(metrics["per_class"]) == {str(d) for d in range(10)}
    for digit, scores in metrics["per_class"].items():
        d = int(digit)
        assert scores["recall"] == pytest.approx(confusion[d, d] / confusion[d].sum(), abs=1e-6)
        assert scores["precision"] == pytest.approx(confusion[d, d] / confusion[:, d].sum(), abs=1e-6)
    assert metrics["dataset"] == mnist.dataset
    assert metrics["data_checksums"] == {
        "algorithm": "sha256 of the decompressed IDX file",
        **mnist.checksums,
    }
    assert metrics["hyper_parameters"]["seed"] == 0 and metrics["hyper_parameters"]["epochs"] == QUICK_EPOCHS
    assert metrics["train_samples"] == QUICK_TRAIN_SAMPLES and metrics["train_seconds"] > 0
    assert metrics["library_versions"]["tensorflow"] == tf.__version__


def test_versions_increase_and_ignore_other_names(tmp_path):
    model_dir = tmp_path / "mnist"
    (model_dir / "7").mkdir(parents=True)
    (model_dir / ".tmp-leftover").mkdir()
    (model_dir / "notes").mkdir()
    assert export_quick_version(tmp_path) == model_dir / "8"
    assert export_quick_version(tmp_path) == model_dir / "9"
    assert export_quick_version(tmp_path, "other") == tmp_path / "other" / "1"


def test_extra_files_land_in_assets_extra(tmp_path, quick_keras_model, test_images):
    png = b"\x89PNG fake"
    version = export_module.export_version(
        quick_keras_model,
        tmp_path,
        metrics={"test_accuracy": 0.5},
        warmup_images=test_images[0][:3],
        extra_files={"curves.png": png},
    )
    assert (version / "assets.extra" / "curves.png").read_bytes() == png


def test_extra_file_names_cannot_escape(tmp_path, quick_keras_model, test_images):
    with pytest.raises(ExportError, match="plain file name"):
        export_module.export_version(
            quick_keras_model,
            tmp_path,
            metrics={},
            warmup_images=test_images[0][:3],
            extra_files={"../../escape.png": b"x"},
        )
    assert _entries(tmp_path / "mnist") == []


@pytest.mark.parametrize("name", ["../escape", ".hidden", "a/b"])
def test_model_name_cannot_escape(tmp_path, quick_keras_model, test_images, name):
    with pytest.raises(ExportError, match="plain directory name"):
        export_module.export_version(
            quick_keras_model, tmp_path, name, metrics={}, warmup_images=test_images[0][:3]
        )
    assert os.listdir(tmp_path) == []


def test_failed_export_leaves_nothing(tmp_path, quick_keras_model, test_images, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_module, "write_warmup_requests", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        export_module.export_version(
            quick_keras_model, tmp_path, metrics={}, warmup_images=test_images[0][:3]
        )
    assert _entries(tmp_path / "mnist") == []


def test_bad_warmup_images_are_refused(tmp_path, quick_keras_model):
    with pytest.raises(ExportError, match=r"uint8 \[N, 28, 28\]"):
        export_module.export_version(
            quick_keras_model, tmp_path, metrics={}, warmup_images=np.zeros((2, 28, 28))
        )


# A separate process that builds an (untrained) model, then exports it. HOLD makes it stop inside the export,
# after the SavedModel is written and before the rename, so the parent can kill it there.
WORKER = """
import os, sys, time
from pathlib import Path
import numpy as np
from training import export
from training.hyperparams import HyperParams
from training.model import build_model

base, ready, go, hold = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "hold"
model = build_model(HyperParams(augment=False))
if hold:
    def block(root):
        ready.touch()
        time.sleep(600)
    export._fsync_tree = block
else:
    ready.touch()
    while not go.exists():
        time.sleep(0.01)
print(export.export_version(model, base, metrics={}, warmup_images=np.zeros((2, 28, 28), np.uint8)))
"""


def _start_worker(base: Path, name: str, *, hold: bool) -> tuple[subprocess.Popen, Path]:
    ready = base / f"ready-{name}"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            WORKER,
            str(base / "models"),
            str(ready),
            str(base / "go"),
            "hold" if hold else "go",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    return process, ready


def _wait_for(path: Path, process: subprocess.Popen, timeout_s: float = 120) -> None:
    def still_running() -> None:
        assert process.poll() is None, "worker exited early"

    eventually(path.exists, what="the worker", timeout_s=timeout_s, interval_s=0.05, alive=still_running)


def test_concurrent_exports_get_distinct_versions(tmp_path):
    workers = [_start_worker(tmp_path, str(i), hold=False) for i in range(2)]
    for process, ready in workers:
        _wait_for(ready, process)
    (tmp_path / "go").touch()
    exported = sorted(process.communicate(timeout=120)[0].strip() for process, _ in workers)
    model_dir = tmp_path / "models" / "mnist"
    assert exported == [str(model_dir / "1"), str(model_dir / "2")]
    for version in ("1", "2"):
        assert contract_violations(model_dir / version) == []
    assert _entries(model_dir) == ["1", "2"]


def test_killed_export_leaves_no_version(tmp_path):
    process, ready = _start_worker(tmp_path, "killed", hold=True)
    try:
        _wait_for(ready, process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    model_dir = tmp_path / "models" / "mnist"
    names = os.listdir(model_dir)
    assert not [n for n in names if n.isdigit()]
    assert [n for n in names if n.startswith(".tmp-")], "the half-written export stays hidden"
    # The next export is not confused by the leftover.
    assert export_quick_version(tmp_path / "models") == model_dir / "1"

"""mnist-serve's model lifecycle with a real server process: hot load, unload, broken versions, hidden
directories, warmup, version policies, HandleReloadConfigRequest, config-file polling, labels, SIGTERM.

One server (policy `all`, no label flag) is shared by this module; each test uses its own version numbers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from tests.fixtures.model_server import ModelServerProcess, copy_models, models_config_text
from tests.fixtures.models import export_quick_version
from tests.waiting import eventually

TIMEOUT = 10


@pytest.fixture(scope="module")
def server(model_base_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-lifecycle")
    base = copy_models(model_base_path, root / "models")
    config = root / "models.config"
    config.write_text(models_config_text(base, versions=None, labels={}))
    process = ModelServerProcess(
        base,
        config,
        root / "mnist-serve.log",
        allow_unavailable_labels=False,
        extra_args=["--model_config_file_poll_wait_seconds=1"],
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def stubs(server):
    channel = grpc.insecure_channel(server.grpc_address)
    yield (
        prediction_service_pb2_grpc.PredictionServiceStub(channel),
        model_service_pb2_grpc.ModelServiceStub(channel),
    )
    channel.close()


def predict(stubs, *, version=None, label=None, name="mnist") -> predict_pb2.PredictResponse:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 28, 28), np.uint8)))
    return stubs[0].Predict(request, timeout=TIMEOUT)


def reload(server, stubs, config_text: str) -> None:
    """What mnist-models does: the file is the source of truth, then HandleReloadConfigRequest."""
    server.config_path.write_text(config_text)
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(config_text, request.config)
    stubs[1].HandleReloadConfigRequest(request, timeout=60)


def copy_version(server, source: int, target: int) -> Path:
    mnist = server.base_path / "mnist"
    staging = mnist / f".tmp-{target}"
    shutil.copytree(mnist / str(source), staging)
    return staging.rename(mnist / str(target))  # atomic, as the exporter does


def log_entries(server, message: str) -> list[dict]:
    """The server's JSON log lines with this message (other lines, e.g. TensorFlow's, are skipped)."""
    entries = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("message") == message:
                entries.append(entry)
    return entries


def state(server, version: int) -> str | None:
    return server.model_status().get(version, (None,))[0]


def test_a_new_version_is_loaded_and_served_without_restart(server, stubs):
    path = export_quick_version(server.base_path)
    version = int(path.name)
    status = server.wait_for_status(lambda s: s.get(version, ("",))[0] == "AVAILABLE")
    assert status[1][0] == "AVAILABLE"  # policy `all`: the old one stays
    assert predict(stubs).model_spec.version.value == max(v for v, s in status.items() if s[0] == "AVAILABLE")
    assert predict(stubs, version=version).model_spec.version.value == version


def test_a_removed_version_is_unloaded(server, stubs):
    copy_version(server, 1, 40)
    server.wait_for_status(lambda s: s.get(40, ("",))[0] == "AVAILABLE")
    assert predict(stubs, version=40).model_spec.version.value == 40
    shutil.rmtree(server.base_path / "mnist" / "40")
    server.wait_for_status(lambda s: s[40][0] == "END")
    assert server.model_status()[40][1] == 0  # a clean unload: OK status
    with pytest.raises(grpc.RpcError) as caught:
        predict(stubs, version=40)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_broken_version_is_reported_and_the_others_keep_serving(server, stubs):
    broken = server.base_path / "mnist" / ".tmp-90"
    (broken / "variables").mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    broken.rename(server.base_path / "mnist" / "90")
    status = server.wait_for_status(lambda s: s.get(90, ("",))[0] == "END")
    _, code, message = status[90]
    assert code != 0 and message
    assert status[1][0] == "AVAILABLE"
    assert predict(stubs).model_spec.version.value != 90
    assert predict(stubs, version=1).model_spec.version.value == 1
    # A version added after the failure is found by a later poll: by then 90 has not been retried (nor has
    # it taken the others down).
    copy_version(server, 1, 92)
    status = server.wait_for_status(lambda s: s.get(92, ("",))[0] == "AVAILABLE")
    assert status[90][0] == "END" and status[1][0] == "AVAILABLE"
    assert [e["version"] for e in log_entries(server, "loading version") if e["version"] == 90] == [90]
    shutil.rmtree(server.base_path / "mnist" / "90")
    shutil.rmtree(server.base_path / "mnist" / "92")
    server.wait_for_status(lambda s: s[92][0] == "END")


def test_a_version_whose_warmup_fails_is_not_served(server, stubs):
    mnist = server.base_path / "mnist"
    staging = mnist / ".tmp-91"
    shutil.copytree(mnist / "1", staging)
    bad = predict_pb2.PredictRequest()
    bad.model_spec.name = "mnist"
    bad.inputs["pixels"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 28, 28), np.uint8)))
    entry = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=bad))
    with tf.io.TFRecordWriter(str(staging / "assets.extra" / "tf_serving_warmup_requests")) as writer:
        writer.write(entry.SerializeToString())
    staging.rename(mnist / "91")
    status = server.wait_for_status(lambda s: s.get(91, ("",))[0] == "END")
    assert "warmup" in status[91][2]
    with pytest.raises(grpc.RpcError):
        predict(stubs, version=91)
    shutil.rmtree(mnist / "91")


def test_hidden_and_non_numeric_directories_are_ignored(server):
    mnist = server.base_path / "mnist"
    shutil.copytree(mnist / "1", mnist / ".tmp-60")
    shutil.copytree(mnist / "1", mnist / "latest")
    copy_version(server, 1, 61)  # the poll that finds 61 has seen the others too
    status = server.wait_for_status(lambda s: s.get(61, ("",))[0] == "AVAILABLE")
    assert 60 not in status
    loaded = {Path(e["path"]).name for e in log_entries(server, "loading version")}
    assert "61" in loaded and not loaded & {".tmp-60", "latest"}
    for name in (".tmp-60", "latest", "61"):
        shutil.rmtree(mnist / name)
    server.wait_for_status(lambda s: s[61][0] == "END")


def test_reload_config_labels_need_available_versions_without_the_flag(server, stubs):
    base = server.base_path
    reload(server, stubs, models_config_text(base, versions=None, labels={"stable": 1}))
    assert predict(stubs, label="stable").model_spec.version.value == 1
    with pytest.raises(grpc.RpcError) as caught:
        reload(server, stubs, models_config_text(base, versions=None, labels={"stable": 1, "canary": 777}))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == (
        "Request to assign label to version 777 of model mnist, "
        "which is not currently available for inference"
    )
    assert predict(stubs, label="stable").model_spec.version.value == 1  # the old labels are kept
    with pytest.raises(grpc.RpcError) as caught:
        predict(stubs, label="canary")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    reload(server, stubs, models_config_text(base, versions=None, labels={}))


def test_reload_config_applies_a_version_policy(server, stubs):
    base = server.base_path
    copy_version(server, 1, 50)
    server.wait_for_status(lambda s: s.get(50, ("",))[0] == "AVAILABLE")
    reload(server, stubs, models_config_text(base, versions=[50], labels={"stable": 50}))
    status = server.wait_for_status(lambda s: all(st[0] == "END" for v, st in s.items() if v != 50))
    assert status[50][0] == "AVAILABLE"
    assert predict(stubs).model_spec.version.value == 50
    assert predict(stubs, label="stable").model_spec.version.value == 50
    reload(server, stubs, models_config_text(base, versions=None, labels={}))
    server.wait_for_status(lambda s: s[1][0] == "AVAILABLE")
    shutil.rmtree(base / "mnist" / "50")
    server.wait_for_status(lambda s: s[50][0] == "END")


def test_reload_config_replaces_the_model_list(server, stubs):
    base = server.base_path
    shutil.copytree(base / "mnist", base / "digits")
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(models_config_text(base, versions=None, labels={}), config)
    digits = config.model_config_list.config.add(name="digits", model_platform="tensorflow")
    digits.base_path = str(base / "digits")
    reload(server, stubs, text_format.MessageToString(config))
    # HandleReloadConfigRequest returns once a newly added model is loaded (default policy: latest version).
    status = server.model_status("digits")
    assert status[max(status)][0] == "AVAILABLE"
    assert predict(stubs, name="digits").model_spec.name == "digits"
    reload(server, stubs, models_config_text(base, versions=None, labels={}))
    server.wait_for_status(lambda s: all(st[0] == "END" for st in s.values()), model_name="digits")
    with pytest.raises(grpc.RpcError) as caught:
        predict(stubs, name="digits")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_reload_config_rejects_bad_configs(server, stubs):
    request = model_management_pb2.ReloadConfigRequest()
    with pytest.raises(grpc.RpcError) as caught:
        stubs[1].HandleReloadConfigRequest(request, timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    twice = models_config_text(server.base_path, versions=None, labels={})
    text_format.Parse(twice, request.config)
    request.config.model_config_list.config.append(request.config.model_config_list.config[0])
    with pytest.raises(grpc.RpcError) as caught:
        stubs[1].HandleReloadConfigRequest(request, timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A base path no file system can name (it hung the reload and stopped every model's polling).
    request.config.model_config_list.config[1].name = "other"
    request.config.model_config_list.config[1].base_path = "/tmp/x\0y"
    with pytest.raises(grpc.RpcError) as caught:
        stubs[1].HandleReloadConfigRequest(request, timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "other" in caught.value.details()
    assert predict(stubs, version=1).model_spec.version.value == 1


def test_a_base_path_that_cannot_be_listed_is_a_missing_one():
    from serving.local_server.model_manager import version_dirs

    assert version_dirs(Path("/tmp/x\0y")) is None


def test_the_config_file_is_polled(server, stubs):
    server.config_path.write_text(models_config_text(server.base_path, versions=None, labels={"polled": 1}))
    eventually(
        lambda: predict(stubs, label="polled").model_spec.version.value == 1,
        what="the polled label",
        retry_on=(grpc.RpcError,),
    )
    reload(server, stubs, models_config_text(server.base_path, versions=None, labels={}))


def write_config(server, data: bytes) -> None:
    """Replace the config file in one step, so that a poll never reads half of it."""
    staging = server.config_path.with_name(".models.config.tmp")
    staging.write_bytes(data)
    staging.replace(server.config_path)


def test_a_polled_promote_that_moves_a_label_to_a_version_not_loaded_yet_converges(server, stubs):
    """Both pushes of a promote land between two polls: the file goes from {1}, stable -> 1 to {1, 81},
    stable -> 81. Moving `stable` to a version that is not AVAILABLE cannot apply yet, so the versions apply
    at once and the labels at a later poll, once 81 has loaded; the wait is logged once."""
    base = server.base_path
    reload(server, stubs, models_config_text(base, versions=[1], labels={"stable": 1}))
    copy_version(server, 1, 81)
    write_config(server, models_config_text(base, versions=[1, 81], labels={"stable": 81}).encode())
    eventually(
        lambda: predict(stubs, label="stable").model_spec.version.value == 81,
        what="stable moved to version 81 by the poll",
        timeout_s=60,
    )
    assert state(server, 1) == "AVAILABLE"
    assert len(log_entries(server, "model config file applied, its labels wait for their versions")) == 1
    assert not any("81" in e["error"] for e in log_entries(server, "model config file rejected"))
    shutil.rmtree(base / "mnist" / "81")
    reload(server, stubs, models_config_text(base, versions=None, labels={}))


def test_a_polled_label_moved_to_a_version_the_file_never_loads_is_rejected(server, stubs):
    """Only a label waiting for a version the same file loads waits: a typo (a version not on disk) is a
    rejected edit, logged as such, and the old labels keep answering."""
    base = server.base_path
    waits = "model config file applied, its labels wait for their versions"
    waited_before = len(log_entries(server, waits))  # the server (and its log) serves the whole module
    reload(server, stubs, models_config_text(base, versions=[1], labels={"stable": 1}))
    write_config(server, models_config_text(base, versions=[1, 21], labels={"stable": 21}).encode())
    eventually(
        lambda: any("21" in e["error"] for e in log_entries(server, "model config file rejected")),
        what="the edit naming version 21 rejected in the log",
    )
    assert len(log_entries(server, waits)) == waited_before
    assert predict(stubs, label="stable").model_spec.version.value == 1
    reload(server, stubs, models_config_text(base, versions=None, labels={}))


def test_a_config_file_that_is_not_utf8_is_rejected_and_a_later_edit_applies(server, stubs):
    text = models_config_text(server.base_path, versions=None, labels={})
    write_config(server, "# r\xe9gl\xe9 par Zo\xeb\n".encode("latin-1") + text.encode())
    eventually(
        lambda: any("UTF-8" in e["error"] for e in log_entries(server, "model config file rejected")),
        what="the non-UTF-8 file rejected in the log",
    )
    write_config(server, models_config_text(server.base_path, versions=None, labels={"fixed": 1}).encode())
    eventually(
        lambda: predict(stubs, label="fixed").model_spec.version.value == 1,
        what="the fixed file applied",
        retry_on=(grpc.RpcError,),
    )
    reload(server, stubs, text)


def test_the_config_file_watcher_outlives_an_unexpected_error(tmp_path):
    from serving.local_server.server import ConfigFileWatcher

    class FailingOnceManager:
        def __init__(self) -> None:
            self.calls = 0

        def reload_config(self, config, **options) -> None:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("a bug in the manager")

    path = tmp_path / "models.config"
    path.write_text(models_config_text(tmp_path, versions=None, labels={}))
    manager = FailingOnceManager()
    watcher = ConfigFileWatcher(path, manager, 0.05, initial_text="")
    watcher.start()
    try:
        eventually(lambda: manager.calls >= 2, what="a poll after the error")
    finally:
        watcher.stop()


def test_zero_padded_version_directories_are_versions(server, stubs):
    mnist = server.base_path / "mnist"
    shutil.copytree(mnist / "1", mnist / ".tmp-0070")
    (mnist / ".tmp-0070").rename(mnist / "0070")
    server.wait_for_status(lambda s: s.get(70, ("",))[0] == "AVAILABLE")
    assert predict(stubs, version=70).model_spec.version.value == 70
    shutil.rmtree(mnist / "0070")
    server.wait_for_status(lambda s: s[70][0] == "END")


def test_sigterm_stops_the_server_gracefully(server):
    assert server.stop() == 0
    assert '"message": "server stopped"' in server.log_tail(50)

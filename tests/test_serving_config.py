"""The TF Serving config files in serving/ parse with the protos the server reads, and make sense together.

ModelServerConfig is the official tensorflow_serving.config class. The tensorflow-serving-api wheel ships no
Python class for BatchingParameters or MonitoringConfig; mnist-serve declares both with TF Serving's field
names and numbers (serving/local_server/config.py), and the text format depends on nothing else.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from deploy.local import stack
from gateway import model_client
from serving.local_server.config import BatchingParametersProto, MonitoringConfigProto
from serving.local_server.flags import parse_flags
from serving.ops import model_config
from tests.fixtures.model_server import ModelServerProcess

SERVING = Path(__file__).resolve().parents[1] / "serving"
CONTAINER_DIR = "/etc/tfserving"  # where docker-compose / k8s mount serving/ (docs/tf-serving.md)

# tensorflow_model_server's flags we rely on (tensorflow_serving/model_servers/main.cc).
TF_SERVING_FLAGS = {
    "port",
    "rest_api_port",
    "model_config_file",
    "model_config_file_poll_wait_seconds",
    "allow_version_labels_for_unavailable_models",
    "enable_batching",
    "batching_parameters_file",
    "monitoring_config_file",
    "grpc_channel_arguments",
}


def parse(path: Path, message):
    text_format.Parse(path.read_text(), message)
    return message


def documented_flags() -> list[str]:
    """The flags of the `tensorflow_model_server` command in serving/README.md (the one docs point to)."""
    readme = (SERVING / "README.md").read_text()
    block = re.search(r"```(?:sh|bash)?\n(tensorflow_model_server[^`]*)```", readme)
    assert block, "serving/README.md has no tensorflow_model_server command block"
    words = shlex.split(block.group(1).replace("\\\n", " "))
    assert words[0] == "tensorflow_model_server"
    return words[1:]


def test_models_config_is_a_valid_model_server_config():
    config = parse(SERVING / "models.config", model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert model.name == "mnist"
    assert model.base_path == "/models/mnist"
    assert model.model_platform == "tensorflow"
    assert model.model_version_policy.WhichOneof("policy_choice") == "specific"
    versions = set(model.model_version_policy.specific.versions)
    assert versions and all(v > 0 for v in versions)
    assert set(model.version_labels) == {"stable", "canary"}
    assert set(model.version_labels.values()) <= versions, "a label points at a version the server won't load"
    model_config.check(config, "mnist")  # the checks mnist-models makes before every change


def test_batching_parameters_are_sensible_for_cpu():
    params = parse(SERVING / "batching_parameters.txt", BatchingParametersProto())
    for field in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
        assert params.HasField(field), f"{field} should be set explicitly"
    assert 1 < params.max_batch_size.value <= 128
    assert 0 <= params.batch_timeout_micros.value <= 10_000, "a lone request should not wait more than 10 ms"
    assert params.num_batch_threads.value >= 1
    assert params.max_enqueued_batches.value >= 1
    if params.allowed_batch_sizes:
        assert list(params.allowed_batch_sizes) == sorted(params.allowed_batch_sizes)
        assert params.allowed_batch_sizes[-1] == params.max_batch_size.value


def test_monitoring_config_exposes_prometheus():
    monitoring = parse(SERVING / "monitoring.config", MonitoringConfigProto())
    assert monitoring.prometheus_config.enable is True
    assert monitoring.prometheus_config.path == "/monitoring/prometheus/metrics"


def test_a_wrong_field_is_rejected_by_the_same_parsers():
    """The parsers are strict: a misspelt field is an error, not silently ignored (as in the real server)."""
    with pytest.raises(text_format.ParseError):
        text_format.Parse("max_batch_sise { value: 8 }", BatchingParametersProto())
    with pytest.raises(text_format.ParseError):
        text_format.Parse("prometheus_config { enabled: true }", MonitoringConfigProto())
    with pytest.raises(text_format.ParseError):
        text_format.Parse(
            "model_config_list { config { nmae: 'x' } }", model_server_config_pb2.ModelServerConfig()
        )


def test_documented_command_uses_real_flags_and_the_files_in_serving():
    flags = dict(flag.removeprefix("--").split("=", 1) for flag in documented_flags())
    assert set(flags) == TF_SERVING_FLAGS
    assert flags["port"] == "8500" and flags["rest_api_port"] == "8501"
    assert flags["allow_version_labels_for_unavailable_models"] == "true"
    assert flags["enable_batching"] == "true"
    assert int(flags["model_config_file_poll_wait_seconds"]) > 0
    for key in ("model_config_file", "batching_parameters_file", "monitoring_config_file"):
        path = Path(flags[key])
        assert str(path.parent) == CONTAINER_DIR, f"{key} should live in {CONTAINER_DIR}"
        assert (SERVING / path.name).is_file(), f"{key} names {path.name}, which serving/ does not have"


def test_the_model_server_accepts_the_gateways_keepalive_pings(tmp_path):
    """gRPC servers refuse pings more often than every 5 minutes by default (GOAWAY "too_many_pings"), and the
    gateway's health watch keeps a call open, so its keepalive pings an idle server every KEEPALIVE_S. The
    documented command tells the server to accept that, and so does every mnist-serve the project starts."""
    [policy] = [flag for flag in documented_flags() if flag.startswith("--grpc_channel_arguments=")]
    arguments = dict(pair.split("=") for pair in policy.split("=", 1)[1].split(","))
    interval_ms = int(arguments["grpc.http2.min_ping_interval_without_data_ms"])
    assert interval_ms <= model_client.KEEPALIVE_S * 1000 / 2  # with room for timers
    local = stack.StackConfig(state_dir=tmp_path, model_base_path=tmp_path)
    fixture = ModelServerProcess(tmp_path, tmp_path / "models.config", tmp_path / "log")
    for where, argv in (("make up", stack.serve_command(local)), ("tests", fixture.command())):
        assert policy in argv, where


def test_docker_compose_runs_tf_serving_with_the_documented_flags(repo_root):
    compose = yaml.safe_load((repo_root / "docker-compose.yml").read_text())
    (service,) = [s for s in compose["services"].values() if "tensorflow/serving" in str(s.get("image", ""))]
    # ${VAR:-default} -> default: the command as it runs without overrides
    command = [re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(word)) for word in service["command"]]
    assert sorted(command) == sorted(documented_flags())
    mounts = [str(v) for v in service.get("volumes", [])]
    assert any(m.split(":")[:2] == ["./serving", CONTAINER_DIR] for m in mounts), mounts


def test_documented_command_starts_mnist_serve_with_the_same_flags():
    """mnist-serve accepts the very same command line (paths mapped to the repository), so local runs and
    containers are configured alike."""
    argv = [flag.replace(CONTAINER_DIR, str(SERVING)) for flag in documented_flags()]
    flags = parse_flags(argv, environ={})
    assert flags.allow_version_labels_for_unavailable_models is True
    assert flags.enable_batching is True
    assert flags.model_config_file == str(SERVING / "models.config")
    assert flags.port == 8500 and flags.rest_api_port == 8501


def test_render_config_points_the_base_path_at_a_local_directory(tmp_path):
    out = tmp_path / "state" / "serving" / "models.config"
    models = tmp_path / "models"
    cmd = [sys.executable, "-m", "serving.ops.cli", "--config", str(SERVING / "models.config")]
    result = subprocess.run(
        [*cmd, "render-config", "--base-path", str(models), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    original = parse(SERVING / "models.config", model_server_config_pb2.ModelServerConfig())
    rendered = parse(out, model_server_config_pb2.ModelServerConfig())
    assert rendered.model_config_list.config[0].base_path == str(models.resolve() / "mnist")
    rendered.model_config_list.config[0].base_path = original.model_config_list.config[0].base_path
    assert rendered == original, "only base_path may change"

    out.write_text(out.read_text() + "# local changes\n")
    again = subprocess.run(
        [*cmd, "render-config", "--base-path", "/elsewhere", "--out", str(out), "--if-missing"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert again.returncode == 0 and "left unchanged" in again.stdout
    assert out.read_text().endswith("# local changes\n")


def test_render_config_of_a_broken_file_is_a_one_line_error(tmp_path):
    broken = tmp_path / "models.config"
    broken.write_text("model_config_list { config { name: 'mnist' ")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving.ops.cli",
            "--config",
            str(broken),
            "render-config",
            "--base-path",
            str(tmp_path),
            "--out",
            str(tmp_path / "out.config"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1 and "is not a ModelServerConfig" in result.stderr
    assert not (tmp_path / "out.config").exists()

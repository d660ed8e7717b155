"""mnist-serve's command line and config files: flags in both forms, one-line errors without TensorFlow being
imported, the text formats of serving/*.config and serving/batching_parameters.txt, tensor conversions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serving.local_server import config, tensors
from serving.local_server.errors import ServingError, StartupError
from serving.local_server.flags import parse_flags

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serving.local_server", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_help_lists_the_tf_serving_flags():
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in (
        "--port",
        "--rest_api_port",
        "--model_config_file",
        "--model_config_file_poll_wait_seconds",
        "--file_system_poll_wait_seconds",
        "--allow_version_labels_for_unavailable_models",
        "--enable_batching",
        "--batching_parameters_file",
        "--monitoring_config_file",
        "--grpc_channel_arguments",
    ):
        assert flag in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port=http"], "not a port number"),
        (["--port", "70000", "--model_base_path=/m"], "port out of range"),
        (["--bogus_flag=1", "--model_base_path=/m"], "unrecognized arguments"),
        (["--model_config_file=/does/not/exist"], "model config file not found: /does/not/exist"),
        (["--model_config_file=/x", "--model_base_path=/m"], "cannot be combined"),
        (["--enable_batching=maybe", "--model_base_path=/m"], "expected true or false"),
        (["--model_base_path=/m", "--enable_batching", "--batching_parameters_file=/nope"], "not found"),
        (["--model_base_path=/m", "--grpc_channel_arguments=grpc.max_connection_age_ms"], "key=value"),
        (["--model_base_path=/m", "--grpc_channel_arguments==5"], "key=value"),
    ],
)
def test_bad_arguments_fail_on_one_line_without_a_traceback(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mnist-serve: error: ")
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_a_malformed_config_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "models.config"
    path.write_text('model_config_list { config { name: "mnist" base_path: "relative/path" } }')
    result = run_cli(f"--model_config_file={path}")
    assert result.returncode == 2
    assert "absolute base_path" in result.stderr and "Traceback" not in result.stderr
    path.write_text("model_config_list { config { name: ")
    result = run_cli(f"--model_config_file={path}")
    assert result.returncode == 2 and "not valid text format" in result.stderr


def test_flags_accept_both_forms_and_bare_booleans():
    flags = parse_flags(
        [
            "--port",
            "9000",
            "--rest_api_port=0",
            "--model_base_path",
            "/m",
            "--enable_batching",
            "--allow_version_labels_for_unavailable_models=false",
            "--model_name=digits",
        ],
        environ={},
    )
    assert (flags.port, flags.rest_api_port, flags.model_base_path, flags.model_name) == (
        9000,
        0,
        "/m",
        "digits",
    )
    assert flags.enable_batching is True and flags.allow_version_labels_for_unavailable_models is False


def test_grpc_channel_arguments_are_parsed_like_tf_serving():
    """key=value pairs, comma-separated; values that are integers are passed as integers."""
    flags = parse_flags(
        [
            "--model_base_path=/m",
            "--grpc_channel_arguments=grpc.max_connection_age_ms=30000, grpc.primary_user_agent=mnist",
        ],
        environ={},
    )
    assert flags.grpc_channel_arguments == (
        ("grpc.max_connection_age_ms", 30000),
        ("grpc.primary_user_agent", "mnist"),
    )
    assert parse_flags(["--model_base_path=/m"], environ={}).grpc_channel_arguments == ()


def test_model_base_path_defaults_from_the_environment_like_the_tf_serving_image():
    flags = parse_flags([], environ={"MODEL_BASE_PATH": "/models", "MODEL_NAME": "mnist"})
    assert (flags.model_name, flags.model_base_path) == ("mnist", "/models/mnist")
    with pytest.raises(StartupError):
        parse_flags([], environ={})


def test_the_repository_serving_config_files_parse():
    models = config.load_model_server_config(REPO / "serving" / "models.config")
    [mnist] = models.model_config_list.config
    assert mnist.name == "mnist" and "stable" in mnist.version_labels
    batching = config.load_batching_options(REPO / "serving" / "batching_parameters.txt")
    assert batching.max_batch_size >= 1 and batching.num_batch_threads >= 1
    monitoring = config.load_monitoring_options(REPO / "serving" / "monitoring.config")
    assert monitoring.prometheus_enabled and monitoring.prometheus_path == "/monitoring/prometheus/metrics"


def test_batching_parameters_are_validated(tmp_path):
    path = tmp_path / "batching.txt"
    path.write_text("max_batch_size { value: 8 } allowed_batch_sizes: 4 allowed_batch_sizes: 6")
    with pytest.raises(StartupError, match="allowed_batch_sizes"):
        config.load_batching_options(path)
    path.write_text("max_batch_size { value: 8 } no_such_field: 1")
    with pytest.raises(StartupError, match="not valid text format"):
        config.load_batching_options(path)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        np.linspace(0, 1, 10, dtype=np.float32).reshape(1, 10),
        np.array([3, -1, 2**40], dtype=np.int64),
        np.array([[True, False]]),
        np.zeros((0, 28, 28), np.uint8),
        np.array([1.5, -2.25], dtype=np.float16),
    ],
)
def test_tensor_protos_round_trip_and_match_tensorflow(array):
    import tensorflow as tf

    proto = tensors.to_proto(array)
    np.testing.assert_array_equal(tensors.to_numpy(proto), array)
    np.testing.assert_array_equal(tf.make_ndarray(proto), array)  # TF reads what we write
    np.testing.assert_array_equal(tensors.to_numpy(tf.make_tensor_proto(array)), array)  # and we read TF's


def test_tensor_proto_fill_rule_and_errors():
    import tensorflow as tf

    proto = tf.make_tensor_proto(np.zeros((2, 2), np.float32))
    proto.ClearField("tensor_content")
    proto.float_val.append(7.0)
    np.testing.assert_array_equal(tensors.to_numpy(proto), np.full((2, 2), 7.0, np.float32))
    proto.float_val.extend([1, 2, 3, 4, 5])
    with pytest.raises(ServingError, match="tensor parsing error"):
        tensors.to_numpy(proto)


def test_json_floats_are_the_shortest_float32_form():
    values = np.array([[0.1, 1 / 3], [2.5, 1e-8]], dtype=np.float32)
    encoded = tensors.to_json(values)
    assert encoded[0][0] == 0.1 and encoded[1][0] == 2.5
    np.testing.assert_array_equal(np.array(encoded, dtype=np.float32), values)  # round-trips exactly
    assert tensors.to_json(np.array([3, 4], np.int64)) == [3, 4]

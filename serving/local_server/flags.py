"""Command-line flags, named as tensorflow_model_server names them (``--flag=value`` or ``--flag value``).

This is the only place the server reads settings: flags first, then the ``MODEL_NAME`` /
``MODEL_BASE_PATH`` environment variables (as the tensorflow/serving image does) when neither
``--model_config_file`` nor ``--model_base_path`` is given.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from serving.local_server.errors import StartupError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass(frozen=True)
class ServerFlags:
    port: int = 8500
    rest_api_port: int = 8501
    bind_address: str = "127.0.0.1"
    rest_api_num_threads: int = 16
    # Parsing a JSON body costs a multiple of its size in memory (docs/model-server.md, Hostile input); 8 MiB
    # still holds the largest tensor (max_tensor_bytes) written as JSON.
    rest_api_max_body_bytes: int = 8 * 1024 * 1024
    rest_api_max_connections: int = 256
    rest_api_timeout_in_ms: int = 30_000
    # Memory grows with the batch far beyond the input (the model's activations: 64 MiB of uint8 images took
    # the server past 3.8 GiB); 1 MiB is 1337 MNIST images. See docs/model-server.md, "Hostile input".
    max_tensor_bytes: int = 1024 * 1024
    grpc_max_threads: int = 32
    # TF Serving's --grpc_channel_arguments, e.g. grpc.max_connection_age_ms=30000: clients then reconnect,
    # and re-resolve a dns:/// name, at least that often (docs/model-server.md says why the manifests don't).
    grpc_channel_arguments: tuple[tuple[str, int | str], ...] = ()
    model_name: str = "default"
    model_base_path: str | None = None
    model_config_file: str | None = None
    model_config_file_poll_wait_seconds: int = 0
    file_system_poll_wait_seconds: int = 1
    allow_version_labels_for_unavailable_models: bool = False
    enable_batching: bool = False
    enable_model_warmup: bool = True
    batching_parameters_file: str | None = None
    monitoring_config_file: str | None = None
    log_format: str = "json"
    log_level: str = "INFO"
    verbose: bool = False


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 0-65535: {value}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {value}")
    return value


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _channel_arguments(text: str) -> tuple[tuple[str, int | str], ...]:
    """`key=value,key=value`, as TF Serving parses it: integer values become integers."""
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = (piece.strip() for piece in item.partition("="))
        if not sep or not key or not value:
            raise argparse.ArgumentTypeError(f"expected key=value pairs, got {item!r}")
        try:
            pairs.append((key, int(value)))
        except ValueError:
            pairs.append((key, value))
    return tuple(pairs)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage block: the way the real binary fails
        raise StartupError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mnist-serve",
        description=(
            "A TF-Serving-compatible model server (gRPC PredictionService/ModelService and the REST API) "
            "for machines without Docker. Flag names follow tensorflow_model_server."
        ),
        epilog="See docs/model-server.md for what it covers and what it does not.",
    )
    defaults = ServerFlags()
    add = parser.add_argument
    add("--port", type=_port, default=defaults.port, help="gRPC port (0 picks a free one). Default 8500.")
    add("--rest_api_port", type=_port, default=defaults.rest_api_port, help="REST port; 0 disables REST.")
    add("--bind_address", default=defaults.bind_address, help="Address both servers bind (not a TF flag).")
    add(
        "--rest_api_num_threads",
        type=_positive,
        default=defaults.rest_api_num_threads,
        help="REST requests processed at once (more wait).",
    )
    add(
        "--rest_api_max_body_bytes",
        type=_positive,
        default=defaults.rest_api_max_body_bytes,
        help="Largest REST request body accepted (413 above). Not a TF flag.",
    )
    add(
        "--rest_api_max_connections",
        type=_positive,
        default=defaults.rest_api_max_connections,
        help="Open REST connections (a thread each); past it, the one waiting longest for its request is "
        "closed. Not a TF flag.",
    )
    add(
        "--rest_api_timeout_in_ms",
        type=_positive,
        default=defaults.rest_api_timeout_in_ms,
        help="Time a REST request (line, headers, body) has to arrive, and its answer to be taken "
        "(default 30000).",
    )
    add(
        "--max_tensor_bytes",
        type=_positive,
        default=defaults.max_tensor_bytes,
        help="Largest input tensor once decoded (INVALID_ARGUMENT above, checked before allocating). "
        "Not a TF flag.",
    )
    add(
        "--grpc_max_threads",
        type=_positive,
        default=defaults.grpc_max_threads,
        help="gRPC handler threads (TF Serving's is larger; calls beyond it queue).",
    )
    add(
        "--grpc_channel_arguments",
        type=_channel_arguments,
        default=defaults.grpc_channel_arguments,
        help="Comma-separated key=value arguments for the gRPC server, as TF Serving takes them "
        "(e.g. grpc.max_connection_age_ms=30000).",
    )
    add("--model_name", default=None, help="Name of the single model (with --model_base_path).")
    add("--model_base_path", default=None, help="Directory holding the versions of the single model.")
    add("--model_config_file", default=None, help="ModelServerConfig text file (several models, labels).")
    add(
        "--model_config_file_poll_wait_seconds",
        type=_non_negative,
        default=defaults.model_config_file_poll_wait_seconds,
        help="Re-read --model_config_file this often; 0 reads it once.",
    )
    add(
        "--file_system_poll_wait_seconds",
        type=_non_negative,
        default=defaults.file_system_poll_wait_seconds,
        help="Look for new/removed versions this often; 0 looks once at start.",
    )
    add(
        "--allow_version_labels_for_unavailable_models",
        type=_bool,
        nargs="?",
        const=True,
        default=defaults.allow_version_labels_for_unavailable_models,
        help="Let a new label point at a version that is not AVAILABLE yet.",
    )
    add(
        "--enable_batching",
        type=_bool,
        nargs="?",
        const=True,
        default=defaults.enable_batching,
        help="Merge concurrent Predict calls into batches.",
    )
    add(
        "--enable_model_warmup",
        type=_bool,
        nargs="?",
        const=True,
        default=defaults.enable_model_warmup,
        help="Replay assets.extra/tf_serving_warmup_requests before a version is AVAILABLE (default true).",
    )
    add(
        "--batching_parameters_file",
        default=None,
        help="BatchingParameters text file (used with --enable_batching).",
    )
    add(
        "--monitoring_config_file",
        default=None,
        help="MonitoringConfig text file (prometheus_config {enable, path}). Default: metrics on "
        "/monitoring/prometheus/metrics.",
    )
    add("--log_format", choices=("json", "text"), default=defaults.log_format, help="Log line format.")
    add("--log_level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), default=defaults.log_level)
    add(
        "--verbose",
        type=_bool,
        nargs="?",
        const=True,
        default=defaults.verbose,
        help="Show TensorFlow's C++ logs and warnings (also shown when TF_CPP_MIN_LOG_LEVEL is set). "
        "Not a TF flag.",
    )
    return parser


def parse_flags(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> ServerFlags:
    """Parse ``argv`` (without the program name). Raises StartupError with a one-line message."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.model_config_file and (args.model_base_path or args.model_name):
        raise StartupError("--model_config_file cannot be combined with --model_name/--model_base_path")
    if not args.model_config_file and not args.model_base_path:
        base = environ.get("MODEL_BASE_PATH")
        if not base:
            raise StartupError("either --model_config_file or --model_base_path is required")
        name = args.model_name or environ.get("MODEL_NAME", "mnist")
        args.model_base_path = str(Path(base) / name)
        args.model_name = name
    values = {k: v for k, v in vars(args).items() if v is not None}
    return ServerFlags(**values)

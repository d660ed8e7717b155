"""Config files in the text formats TF Serving reads: ModelServerConfig, BatchingParameters, MonitoringConfig.

ModelServerConfig comes from the official ``tensorflow_serving.config`` protos. The wheel ships no Python
module for BatchingParameters (session_bundle_config.proto) or MonitoringConfig (monitoring_config.proto),
so those two messages are declared here with the same field names, which is all the text format uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf.message import Message
from tensorflow_serving.config import model_server_config_pb2

from serving.local_server.errors import StartupError, invalid_argument

ModelServerConfig = model_server_config_pb2.ModelServerConfig
ModelConfig = model_server_config_pb2.ModelConfig

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


class ConfigError(ValueError):
    """A config file or config message is malformed or inconsistent."""


def _declare_messages() -> tuple[type[Message], type[Message]]:
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    from google.protobuf import wrappers_pb2

    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    f = descriptor_pb2.FileDescriptorProto(
        name="mnist_serve/tfs_config_subset.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    T = descriptor_pb2.FieldDescriptorProto
    batching = f.message_type.add(name="BatchingParameters")
    fields = [
        ("max_batch_size", ".google.protobuf.Int64Value"),
        ("batch_timeout_micros", ".google.protobuf.Int64Value"),
        ("max_enqueued_batches", ".google.protobuf.Int64Value"),
        ("num_batch_threads", ".google.protobuf.Int64Value"),
        ("thread_pool_name", ".google.protobuf.StringValue"),
    ]
    for number, (name, type_name) in enumerate(fields, start=1):
        batching.field.add(
            name=name, number=number, type=T.TYPE_MESSAGE, type_name=type_name, label=T.LABEL_OPTIONAL
        )
    batching.field.add(name="allowed_batch_sizes", number=6, type=T.TYPE_INT64, label=T.LABEL_REPEATED)
    batching.field.add(name="pad_variable_length_inputs", number=7, type=T.TYPE_BOOL, label=T.LABEL_OPTIONAL)
    batching.field.add(
        name="enable_large_batch_splitting", number=8, type=T.TYPE_BOOL, label=T.LABEL_OPTIONAL
    )
    batching.field.add(
        name="max_execution_batch_size",
        number=9,
        type=T.TYPE_MESSAGE,
        type_name=".google.protobuf.Int64Value",
        label=T.LABEL_OPTIONAL,
    )
    prometheus = f.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=T.TYPE_BOOL, label=T.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    monitoring = f.message_type.add(name="MonitoringConfig")
    monitoring.field.add(
        name="prometheus_config",
        number=1,
        type=T.TYPE_MESSAGE,
        type_name=".tensorflow.serving.PrometheusConfig",
        label=T.LABEL_OPTIONAL,
    )
    pool.Add(f)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig")),
    )


BatchingParametersProto, MonitoringConfigProto = _declare_messages()


@dataclass(frozen=True)
class BatchingOptions:
    """Batching knobs; defaults are TF Serving's when batching is on and a field is left out."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = 2
    allowed_batch_sizes: tuple[int, ...] = ()
    enable_large_batch_splitting: bool = False


@dataclass(frozen=True)
class MonitoringOptions:
    prometheus_enabled: bool = True
    prometheus_path: str = DEFAULT_PROMETHEUS_PATH


def read_text(path: str | Path, what: str) -> str:
    """A config file as text; StartupError (one line) when missing or unreadable."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StartupError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StartupError(f"cannot read {what} {path}: {exc}") from None


def _parse(text: str, message: Message, what: str) -> Message:
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ConfigError(f"{what} is not valid text format: {exc}") from None
    return message


def parse_model_server_config(text: str) -> ModelServerConfig:
    """Parse and validate a ModelServerConfig in text format; raises ConfigError."""
    config = _parse(text, ModelServerConfig(), "model config")
    validate_model_server_config(config)
    return config


def validate_model_server_config(config: ModelServerConfig) -> None:
    """The checks TF Serving makes before accepting a config (ServerCore::ValidateModelConfigList)."""
    if config.WhichOneof("config") != "model_config_list":
        raise ConfigError("only model_config_list is supported (no custom_model_config)")
    seen: set[str] = set()
    for model in config.model_config_list.config:
        if not model.name:
            raise ConfigError("a model config has no name")
        if model.name in seen:
            raise ConfigError(f"illegal to list model {model.name} multiple times in config list")
        seen.add(model.name)
        if not model.base_path:
            raise ConfigError(f"model {model.name} has no base_path")
        if "\0" in model.base_path:
            raise ConfigError(f"model {model.name} has a base_path with a NUL character")
        if not Path(model.base_path).is_absolute():
            raise ConfigError(f"expected model {model.name} to have an absolute base_path: {model.base_path}")
        if model.model_platform not in ("", "tensorflow"):
            raise ConfigError(f"model {model.name} requests unsupported platform {model.model_platform}")
        for label, version in model.version_labels.items():
            if version <= 0:
                raise ConfigError(f"label {label} of model {model.name} has a non-positive version {version}")
        policy = model.model_version_policy
        if policy.WhichOneof("policy_choice") == "latest" and policy.latest.num_versions < 0:
            raise ConfigError(f"model {model.name}: latest.num_versions must be >= 0")


def load_model_server_config(path: str | Path) -> ModelServerConfig:
    try:
        return parse_model_server_config(read_text(path, "model config file"))
    except ConfigError as exc:
        raise StartupError(f"{path}: {exc}") from None


def single_model_config(name: str, base_path: str | Path) -> ModelServerConfig:
    """The config --model_name/--model_base_path stand for: one model, latest version."""
    config = ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = str(Path(base_path).resolve())
    model.model_platform = "tensorflow"
    return config


def check_reload_request(config: ModelServerConfig) -> None:
    """HandleReloadConfigRequest's own check, as a ServingError (INVALID_ARGUMENT)."""
    if config.WhichOneof("config") != "model_config_list":
        raise invalid_argument(
            "ServerModelConfig type not supported by HandleReloadConfigRequest. "
            "Only ModelConfigList is currently supported"
        )
    try:
        validate_model_server_config(config)
    except ConfigError as exc:
        raise invalid_argument(str(exc)) from None


def load_batching_options(path: str | Path | None) -> BatchingOptions:
    if path is None:
        return BatchingOptions()
    try:
        proto = _parse(
            read_text(path, "batching parameters file"), BatchingParametersProto(), "batching file"
        )
    except ConfigError as exc:
        raise StartupError(f"{path}: {exc}") from None
    defaults = BatchingOptions()

    def pick(field: str) -> int:
        return getattr(proto, field).value if proto.HasField(field) else getattr(defaults, field)

    options = BatchingOptions(
        max_batch_size=pick("max_batch_size"),
        batch_timeout_micros=pick("batch_timeout_micros"),
        max_enqueued_batches=pick("max_enqueued_batches"),
        num_batch_threads=pick("num_batch_threads"),
        allowed_batch_sizes=tuple(proto.allowed_batch_sizes),
        enable_large_batch_splitting=proto.enable_large_batch_splitting,
    )
    problems = []
    if options.max_batch_size < 1:
        problems.append("max_batch_size must be >= 1")
    if options.num_batch_threads < 1:
        problems.append("num_batch_threads must be >= 1")
    if options.max_enqueued_batches < 1:
        problems.append("max_enqueued_batches must be >= 1")
    if options.batch_timeout_micros < 0:
        problems.append("batch_timeout_micros must be >= 0")
    sizes = options.allowed_batch_sizes
    if sizes and (list(sizes) != sorted(set(sizes)) or sizes[-1] != options.max_batch_size):
        problems.append("allowed_batch_sizes must increase and end with max_batch_size")
    if problems:
        raise StartupError(f"{path}: " + "; ".join(problems))
    return options


def load_monitoring_options(path: str | Path | None) -> MonitoringOptions:
    if path is None:
        return MonitoringOptions()
    try:
        proto = _parse(read_text(path, "monitoring config file"), MonitoringConfigProto(), "monitoring file")
    except ConfigError as exc:
        raise StartupError(f"{path}: {exc}") from None
    prometheus = proto.prometheus_config
    path_value = prometheus.path or DEFAULT_PROMETHEUS_PATH
    if not path_value.startswith("/"):
        raise StartupError(f"{path}: prometheus_config.path must start with '/': {path_value}")
    return MonitoringOptions(prometheus_enabled=prometheus.enable, prometheus_path=path_value)


@dataclass(frozen=True)
class StartupFiles:
    """What is read from disk before TensorFlow is imported, so a bad file fails in a fraction of a second."""

    model_config: ModelServerConfig
    model_config_text: str  # "" without --model_config_file
    batching: BatchingOptions | None  # None: batching off
    monitoring: MonitoringOptions


def load_startup_files(
    *,
    model_config_file: str | None,
    model_name: str | None,
    model_base_path: str | None,
    enable_batching: bool,
    batching_parameters_file: str | None,
    monitoring_config_file: str | None,
) -> StartupFiles:
    if model_config_file:
        text = read_text(model_config_file, "model config file")
        try:
            model_config = parse_model_server_config(text)
        except ConfigError as exc:
            raise StartupError(f"{model_config_file}: {exc}") from None
    else:
        text = ""
        model_config = single_model_config(model_name or "default", model_base_path or "")
    return StartupFiles(
        model_config=model_config,
        model_config_text=text,
        batching=load_batching_options(batching_parameters_file) if enable_batching else None,
        monitoring=load_monitoring_options(monitoring_config_file),
    )

"""Pure functions on ModelServerConfig protos: parse, check, derive changed copies (never mutating).

Invariants kept by every change: the model uses a `specific` version policy, and every label points at a
listed version (TF Serving would otherwise serve a label whose version it is unloading).
"""

from __future__ import annotations

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving.ops.errors import ConfigError

ModelServerConfig = model_server_config_pb2.ModelServerConfig
ModelConfig = model_server_config_pb2.ModelConfig

HEADER = (
    "# ModelServerConfig (protobuf text format), managed by `mnist-models`: it rewrites this file\n"
    "# atomically and applies it with HandleReloadConfigRequest. Hand edits are fine while no\n"
    "# mnist-models command runs (comments are not kept).\n"
)


def parse(text: str, *, source: str = "config") -> ModelServerConfig:
    config = ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise ConfigError(f"{source} is not a ModelServerConfig: {error}") from None
    if not config.HasField("model_config_list"):
        raise ConfigError(f"{source} has no model_config_list")
    return config


def to_text(config: ModelServerConfig) -> str:
    return HEADER + text_format.MessageToString(config)


def model_names(config: ModelServerConfig) -> list[str]:
    return [model.name for model in config.model_config_list.config]


def find_model(config: ModelServerConfig, name: str) -> ModelConfig:
    for model in config.model_config_list.config:
        if model.name == name:
            return model
    known = ", ".join(model_names(config)) or "none"
    raise ConfigError(f"model {name!r} is not in the config (models: {known})")


def versions(config: ModelServerConfig, name: str) -> list[int]:
    """The versions the `specific` policy asks the server to load, ascending."""
    model = find_model(config, name)
    if model.model_version_policy.WhichOneof("policy_choice") != "specific":
        policy = model.model_version_policy.WhichOneof("policy_choice") or "the default latest policy"
        raise ConfigError(
            f"model {name!r} needs `model_version_policy {{ specific {{ versions: N }} }}` to manage labels "
            f"(it has {policy})"
        )
    return sorted(set(model.model_version_policy.specific.versions))


def labels(config: ModelServerConfig, name: str) -> dict[str, int]:
    return dict(sorted(find_model(config, name).version_labels.items()))


def check(config: ModelServerConfig, name: str) -> None:
    """ConfigError unless no model is named twice (the server refuses that config), and the model exists, has
    a non-empty specific policy, labels on listed versions."""
    names = model_names(config)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        times = names.count(twice[0])
        raise ConfigError(f"model {twice[0]!r} is listed {times} times (the server refuses that)")
    listed = versions(config, name)
    if not listed:
        raise ConfigError(f"model {name!r} lists no versions")
    if any(v <= 0 for v in listed):
        raise ConfigError(f"model {name!r} lists a version <= 0: {listed}")
    for label, version in labels(config, name).items():
        if version not in listed:
            raise ConfigError(f"label {label!r} points at version {version}, which is not listed ({listed})")


def with_versions(config: ModelServerConfig, name: str, wanted: list[int] | set[int]) -> ModelServerConfig:
    """A copy serving exactly `wanted`; refuses to drop a version a label points at."""
    labelled = set(labels(config, name).values())
    missing = labelled - set(wanted)
    if missing:
        raise ConfigError(f"cannot unload labelled version(s) {sorted(missing)} of {name!r}")
    new = _copy(config)
    specific = find_model(new, name).model_version_policy.specific
    del specific.versions[:]
    specific.versions.extend(sorted(set(wanted)))
    return new


def with_label(config: ModelServerConfig, name: str, label: str, version: int) -> ModelServerConfig:
    """A copy where `label` points at `version`, which must already be listed."""
    if version not in versions(config, name):
        raise ConfigError(f"cannot point {label!r} at version {version}: not listed in the version policy")
    new = _copy(config)
    find_model(new, name).version_labels[label] = version
    return new


def with_base_path(config: ModelServerConfig, base_path: str) -> ModelServerConfig:
    """A copy where every model's base_path is `<base_path>/<model name>` (MODEL_BASE_PATH layout)."""
    new = _copy(config)
    for model in new.model_config_list.config:
        model.base_path = f"{base_path.rstrip('/')}/{model.name}"
    return new


def _copy(config: ModelServerConfig) -> ModelServerConfig:
    new = ModelServerConfig()
    new.CopyFrom(config)
    return new

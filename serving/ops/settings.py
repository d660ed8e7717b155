"""Defaults of `mnist-models`, read from the environment in this one place (flags override them).

- `MODEL_SERVER_GRPC` (`localhost:8500`), `MODEL_CONFIG_FILE` (`serving/models.config`), `MODEL_BASE_PATH`
  (the config's base_path's parent), `MODEL_NAME` (`mnist`), `MODEL_MIN_ACCURACY` (`0.99`): the model server,
  its config and the quality gate of `promote`, `canary` and `rollout`.
- `GATEWAY_URL` (`http://localhost:8080`): the gateway `rollout` and `scorecard` talk to (http or https).
- `OPS_TOKEN` (empty): the gateway's ops token, sent as a bearer token when `rollout` changes the rollout
  state (reading the state and the scorecard needs none).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit


def check_gateway_url(url: str) -> str:
    """The URL without a trailing slash; ValueError unless it is http(s)://host[:port][/path]."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"GATEWAY_URL must be http(s)://host[:port], got {url!r}")
    return url.rstrip("/")


@dataclass(frozen=True)
class Settings:
    server: str = "localhost:8500"  # MODEL_SERVER_GRPC
    config: str = "serving/models.config"  # MODEL_CONFIG_FILE
    model_base_path: str | None = (
        None  # MODEL_BASE_PATH (parent of <model name>/); None: the config's base_path
    )
    model_name: str = "mnist"  # MODEL_NAME
    min_accuracy: float = 0.99  # MODEL_MIN_ACCURACY
    max_accuracy_drop: float = 0.002  # MODEL_MAX_ACCURACY_DROP: test accuracy a version may lose to stable
    gateway_url: str = "http://localhost:8080"  # GATEWAY_URL
    ops_token: str = ""  # OPS_TOKEN

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        defaults = cls()
        return cls(
            server=env.get("MODEL_SERVER_GRPC") or defaults.server,
            config=env.get("MODEL_CONFIG_FILE") or defaults.config,
            model_base_path=env.get("MODEL_BASE_PATH") or None,
            model_name=env.get("MODEL_NAME") or defaults.model_name,
            min_accuracy=_fraction(env, "MODEL_MIN_ACCURACY", defaults.min_accuracy),
            max_accuracy_drop=_fraction(env, "MODEL_MAX_ACCURACY_DROP", defaults.max_accuracy_drop),
            gateway_url=check_gateway_url(env.get("GATEWAY_URL") or defaults.gateway_url),
            ops_token=(env.get("OPS_TOKEN") or "").strip(),
        )


def _fraction(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name) or str(default)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:  # false for NaN too, which would turn the quality gate off
        raise ValueError(f"{name} must be a number between 0 and 1, got {text!r}")
    return value

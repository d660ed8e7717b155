"""Settings read from the environment, in one place. Command-line flags override them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from training.contract import MODEL_NAME

DEFAULT_MIRROR_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"


def _default_cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "mnist-stack" / "mnist"


@dataclass(frozen=True)
class Settings:
    data_dir: Path | None
    model_base_path: Path | None
    model_name: str
    mirror_url: str
    cache_dir: Path
    snapshot_dir: Path | None = None  # FEEDBACK_SNAPSHOT_DIR; None: MODEL_BASE_PATH/feedback-snapshots


def from_env(env: os._Environ[str] | dict[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    data_dir = env.get("MNIST_DATA_DIR")
    base = env.get("MODEL_BASE_PATH")
    cache = env.get("MNIST_CACHE_DIR")
    snapshots = env.get("FEEDBACK_SNAPSHOT_DIR")
    return Settings(
        data_dir=Path(data_dir) if data_dir else None,
        model_base_path=Path(base) if base else None,
        model_name=env.get("MODEL_NAME") or MODEL_NAME,
        mirror_url=env.get("MNIST_MIRROR_URL") or DEFAULT_MIRROR_URL,
        cache_dir=Path(cache) if cache else _default_cache_dir(),
        snapshot_dir=Path(snapshots) if snapshots else None,
    )

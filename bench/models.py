"""Which model the benchmarks measure: the full default model, where a user keeps it.

In order: BENCH_MODEL_BASE_PATH, MODEL_BASE_PATH, then `make up`'s `.state/models`; the first that holds an
exported version of `mnist` wins. A benchmark that finds none falls back to a quick export and says so.
"""

from __future__ import annotations

import os
from pathlib import Path

from training.contract import version_dirs

REPO_ROOT = Path(__file__).resolve().parents[1]


def versions(base: Path, model_name: str = "mnist") -> list[int]:
    folder = base / model_name
    return list(version_dirs(folder)) if folder.is_dir() else []


def default_model_base(model_name: str = "mnist") -> Path | None:
    candidates = [os.environ.get("BENCH_MODEL_BASE_PATH"), os.environ.get("MODEL_BASE_PATH")]
    for candidate in [*(Path(c) for c in candidates if c), REPO_ROOT / ".state" / "models"]:
        if versions(candidate, model_name):
            return candidate
    return None

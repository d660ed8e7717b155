"""Model versions on disk: `<model dir>/<version>/` with `assets.extra/metrics.json` (written by mnist-train).

Which entries are versions is `training.contract.version_of`'s rule (TF Serving's); an export in progress is
a hidden `.tmp-*` sibling, and a version directory without `saved_model.pb` is not listed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serving.ops.errors import ConfigError, QualityGateFailed, VersionNotFound
from training.contract import is_complete, version_dirs

METRICS_PATH = Path("assets.extra") / "metrics.json"


@dataclass(frozen=True)
class DiskVersion:
    version: int
    path: Path
    metrics: dict[str, Any] | None
    metrics_problem: str = ""  # why `metrics` is None ("no metrics.json", "unreadable: ...")

    @property
    def accuracy(self) -> float | None:
        value = (self.metrics or {}).get("test_accuracy")
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    @property
    def created_at(self) -> str:
        created = (self.metrics or {}).get("created_at")
        if isinstance(created, str) and created:
            return created
        stamp = datetime.fromtimestamp(self.path.stat().st_mtime, UTC)
        return stamp.isoformat(timespec="seconds")


def _read_metrics(version_dir: Path) -> tuple[dict[str, Any] | None, str]:
    try:
        data = json.loads((version_dir / METRICS_PATH).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"no {METRICS_PATH}"
    except (OSError, ValueError) as error:
        return None, f"unreadable {METRICS_PATH}: {error}"
    if not isinstance(data, dict):
        return None, f"{METRICS_PATH} is not a JSON object"
    return data, ""


def _load(version: int, version_dir: Path) -> DiskVersion:
    metrics, problem = _read_metrics(version_dir)
    return DiskVersion(version, version_dir, metrics, problem)


def scan(model_dir: Path) -> list[DiskVersion]:
    """Complete versions under `model_dir`, ascending; a missing directory is a ConfigError (wrong path)."""
    if not model_dir.is_dir():
        raise ConfigError(
            f"model directory {model_dir} not found (check --model-base-path / MODEL_BASE_PATH)"
        )
    return [_load(version, path) for version, path in version_dirs(model_dir).items() if is_complete(path)]


def find(model_dir: Path, version: int) -> DiskVersion:
    """The version's directory, whatever its spelling ("7" or "0007", as TF Serving reads both)."""
    found = scan(model_dir)
    for candidate in found:
        if candidate.version == version:
            return candidate
    on_disk = ", ".join(str(v.version) for v in found) or "none"
    raise VersionNotFound(f"version {version} not found in {model_dir} (versions on disk: {on_disk})")


def check_quality(version: DiskVersion, *, min_accuracy: float, force: bool) -> str:
    """One line describing the gate's verdict; raises QualityGateFailed unless it passes or `force` is set."""
    if version.accuracy is None:
        why = version.metrics_problem or "no test_accuracy"
        verdict = f"version {version.version}: test accuracy unknown ({why})"
    elif version.accuracy < min_accuracy:
        verdict = (
            f"version {version.version}: test accuracy {version.accuracy:.4f} < required {min_accuracy:.4f}"
        )
    else:
        return f"version {version.version}: test accuracy {version.accuracy:.4f} >= {min_accuracy:.4f}"
    if not force:
        raise QualityGateFailed(f"{verdict}; refusing (use --force to override)")
    return f"{verdict}; going ahead because of --force"

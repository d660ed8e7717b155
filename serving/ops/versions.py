"""Model versions on disk: `<model dir>/<version>/` with `assets.extra/metrics.json` (written by mnist-train).

Which entries are versions is `training.contract.version_of`'s rule (TF Serving's); an export in progress is
a hidden `.tmp-*` sibling, and a version directory without `saved_model.pb` is not listed.
"""

from __future__ import annotations

import json
import math
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
        return _number((self.metrics or {}).get("test_accuracy"))

    @property
    def accuracy_problem(self) -> str:
        """Why `accuracy` is None."""
        if self.metrics_problem:
            return self.metrics_problem
        value = (self.metrics or {}).get("test_accuracy")
        return "no test_accuracy" if value is None else f"test_accuracy {value!r} is not a finite number"

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


DEFAULT_MAX_ACCURACY_DROP = 0.002  # MODEL_MAX_ACCURACY_DROP: test accuracy a new version may lose


def _number(value: object) -> float | None:
    """A metric as a float; None for anything else, NaN and infinity included (json reads the bare token
    NaN, and every comparison with NaN is false: it would pass any threshold)."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return None
    return float(value)


def _replacement_problems(candidate: DiskVersion, baseline: DiskVersion, max_drop: float) -> list[str]:
    """Why `candidate` may not replace `baseline`: MNIST test accuracy lost beyond `max_drop`, or (trained
    with feedback) not beating it on the feedback holdout. Both figures come from the candidate's metrics.json
    when its training scored the baseline (same run, same images); else the baseline's own metrics.json."""
    problems = []
    feedback = (candidate.metrics or {}).get("feedback")
    feedback = feedback if isinstance(feedback, dict) else None
    scored = feedback.get("baseline") if feedback else None
    scored = scored if isinstance(scored, dict) and scored.get("version") == baseline.version else None
    reference = _number(scored.get("test_accuracy")) if scored else baseline.accuracy
    datasets = {(v.metrics or {}).get("dataset") for v in (candidate, baseline)} - {None}
    if candidate.accuracy is not None:
        if reference is None:
            why = baseline.accuracy_problem
            problems.append(f"the test accuracy of version {baseline.version} it replaces is unknown ({why})")
        elif not scored and len(datasets) > 1:
            problems.append(
                f"versions {candidate.version} and {baseline.version} were scored on different test sets "
                f"({', '.join(sorted(datasets))})"
            )
        elif round(reference - candidate.accuracy, 6) > max_drop:
            problems.append(
                f"test accuracy {candidate.accuracy:.4f} is {reference - candidate.accuracy:.4f} below "
                f"{reference:.4f} of version {baseline.version} it replaces (allowed drop {max_drop:.4f})"
            )
    if feedback is None:
        return problems
    if scored is None:
        named = feedback.get("baseline")
        against = named.get("version") if isinstance(named, dict) else None
        problems.append(
            f"its feedback holdout was scored against version {against}, but it would replace version "
            f"{baseline.version} (retrain with --baseline {baseline.version})"
        )
        return problems
    new, old = _number(feedback.get("holdout_accuracy")), _number(scored.get("holdout_accuracy"))
    where = f"snapshot {feedback.get('snapshot_id')}, {feedback.get('holdout_samples')} holdout images"
    if new is None or old is None:
        problems.append(f"no feedback holdout accuracy to compare ({where})")
    elif new <= old:
        problems.append(
            f"feedback holdout accuracy {new:.4f} does not beat {old:.4f} of version {baseline.version} "
            f"({where})"
        )
    return problems


def check_quality(
    version: DiskVersion,
    *,
    min_accuracy: float,
    force: bool,
    baseline: DiskVersion | None = None,
    max_drop: float = DEFAULT_MAX_ACCURACY_DROP,
) -> str:
    """The quality gate: the verdict as text; raises QualityGateFailed unless it passes or `force` is set.

    `version` needs a test accuracy >= `min_accuracy`; with a `baseline` (the version it would replace) it may
    lose at most `max_drop` of test accuracy against it, and if it was trained with feedback it must beat it
    on the feedback holdout."""
    problems = []
    if version.accuracy is None:
        problems.append(f"test accuracy unknown ({version.accuracy_problem})")
    elif version.accuracy < min_accuracy:
        problems.append(f"test accuracy {version.accuracy:.4f} < required {min_accuracy:.4f}")
    if baseline is not None and baseline.version != version.version:
        problems += _replacement_problems(version, baseline, max_drop)
    if not problems:
        passed = f"version {version.version}: test accuracy {version.accuracy:.4f} >= {min_accuracy:.4f}"
        if baseline is not None and baseline.version != version.version:
            passed += _comparison_summary(version, baseline, max_drop)
        return passed
    verdict = f"version {version.version}: " + "; ".join(problems)
    if not force:
        raise QualityGateFailed(f"{verdict}; refusing (use --force to override)")
    return f"{verdict}; going ahead because of --force"


def _comparison_summary(candidate: DiskVersion, baseline: DiskVersion, max_drop: float) -> str:
    feedback = (candidate.metrics or {}).get("feedback") or {}
    text = f", within {max_drop:.4f} of version {baseline.version}"
    if feedback:
        text += (
            f"; feedback holdout accuracy {feedback['holdout_accuracy']:.4f} > "
            f"{feedback['baseline']['holdout_accuracy']:.4f} of version {baseline.version}"
        )
    return text


def quality_gate(
    model_dir: Path,
    version: int,
    replaces: int | None,
    *,
    min_accuracy: float,
    max_drop: float = DEFAULT_MAX_ACCURACY_DROP,
    force: bool,
) -> str:
    """The gate of promote, canary and rollout: `version` (on disk under `model_dir`) against the version it
    would replace (`replaces`, the current stable; None: nothing to compare with). One verdict line."""
    candidate = find(model_dir, version)
    baseline = None
    if replaces is not None and replaces != version:
        try:
            baseline = find(model_dir, replaces)
        except VersionNotFound:
            baseline = DiskVersion(replaces, model_dir / str(replaces), None, "not on disk")
    return check_quality(
        candidate, min_accuracy=min_accuracy, force=force, baseline=baseline, max_drop=max_drop
    )

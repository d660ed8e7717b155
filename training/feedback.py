"""Training with a feedback snapshot: which snapshot and baseline, and the lineage written into metrics.json.

    "feedback": {"snapshot_id", "snapshot_path", "train_samples", "weight",
                 "holdout_accuracy", "holdout_samples",
                 "baseline": {"version", "path", "holdout_accuracy", "test_accuracy"}}

The baseline is the version the new one would replace (the current `stable`), scored here on the same holdout
and the same MNIST test images through its exported signature, so the quality gate (`mnist-models`) compares
figures measured in one run on one data set.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from training.contract import version_of
from training.errors import TrainingError
from training.snapshot import ID_PATTERN, Snapshot, load_snapshot

SNAPSHOT_DIR_NAME = "feedback-snapshots"  # under MODEL_BASE_PATH unless FEEDBACK_SNAPSHOT_DIR says otherwise
# Weight of a feedback image in the loss against 1 for an MNIST image (docs/training.md: measured choice).
DEFAULT_FEEDBACK_WEIGHT = 1.0


def snapshot_root(explicit: Path | None, model_base_path: Path | None) -> Path:
    if explicit is not None:
        return Path(explicit)
    if model_base_path is None:
        raise TrainingError(
            "no snapshot directory: pass --snapshot-dir D (or set FEEDBACK_SNAPSHOT_DIR or MODEL_BASE_PATH)"
        )
    return Path(model_base_path) / SNAPSHOT_DIR_NAME


def resolve_snapshot(argument: str, root: Path | None) -> Snapshot:
    """A snapshot directory, or `latest`: the newest under the snapshot root (ids start with their time).
    Only directories named like a snapshot id count, not a volume's `lost+found` or an operator's `old/`."""
    if argument == "latest":
        if root is None or not root.is_dir():
            raise TrainingError(f"no snapshot directory {root} (export one: mnist-train dataset export)")
        found = sorted(p for p in root.iterdir() if ID_PATTERN.fullmatch(p.name) and p.is_dir())
        if not found:
            raise TrainingError(f"no snapshot in {root} (export one: mnist-train dataset export)")
        return load_snapshot(found[-1].absolute())
    return load_snapshot(Path(argument).absolute())  # metrics.json names it: not relative to where this ran


def resolve_baseline(argument: str, model_dir: Path) -> tuple[int, Path]:
    """(version, directory) of the version a new one would replace: a version number or its directory."""
    from training.artifact import check_version_dir

    path = model_dir / argument if version_of(argument) is not None else Path(argument)
    version = version_of(path.name)
    if version is None:
        raise TrainingError(f"--baseline {argument}: not a version number nor a version directory")
    return version, check_version_dir(path.absolute())


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float | None:
    if len(labels) == 0:
        return None
    return round(float((np.argmax(probabilities, axis=1) == labels).mean()), 6)


def feedback_metrics(
    model, snapshot: Snapshot, *, weight: float, baseline: tuple[int, Path], test_images, test_labels
) -> dict:
    from training.artifact import predict_with_signature
    from training.model import predict_probabilities

    version, path = baseline
    holdout = snapshot.holdout_images, snapshot.holdout_labels
    return {
        "snapshot_id": snapshot.id,
        "snapshot_path": os.fspath(snapshot.path),
        "train_samples": len(snapshot.train_labels),
        "weight": weight,
        "holdout_accuracy": accuracy(predict_probabilities(model, holdout[0]), holdout[1])
        if len(holdout[1])
        else None,
        "holdout_samples": len(holdout[1]),
        "warnings": snapshot.manifest.get("warnings", []),
        "baseline": {
            "version": version,
            "path": os.fspath(path),
            "holdout_accuracy": accuracy(predict_with_signature(path, holdout[0]), holdout[1])
            if len(holdout[1])
            else None,
            "test_accuracy": accuracy(predict_with_signature(path, test_images), test_labels),
        },
    }

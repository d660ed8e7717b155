"""The model contract shared with the model server and the gateway (see docs/training.md).

Defined once here; the export writes it and the contract tests check it.
"""

from __future__ import annotations

from pathlib import Path

MODEL_NAME = "mnist"
SIGNATURE_NAME = "serving_default"
INPUT_KEY = "image"
PROBABILITIES_KEY = "probabilities"
DIGIT_KEY = "digit"
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10

ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
METRICS_FILE = "metrics.json"
SAVED_MODEL_FILE = "saved_model.pb"

# A model's versions are the children of `<base>/<model>/` whose names are version numbers. The rule is
# TF Serving's (FileSystemStoragePathSource parses each child name as an int64 and skips the rest), so
# `mnist-serve`, `mnist-models`, `mnist-train` and the local stack see the versions TF Serving would:
# "0" is version 0, "007" is version 7, ".tmp-*" and "latest" are not versions. Two deliberate narrowings:
# only plain digits count (TF Serving would also take "-3" or " 7"; nothing here writes such names), and only
# directories (TF Serving would try to load a plain file named "5" and fail).
MAX_VERSION = 2**63 - 1


def version_of(name: str) -> int | None:
    """The version a directory name stands for, or None when the name is not a version."""
    if not name.isascii() or not name.isdigit():
        return None
    version = int(name)
    return version if version <= MAX_VERSION else None


def version_dirs(model_dir: Path) -> dict[int, Path]:
    """{version: directory} under `model_dir`, ascending; OSError when `model_dir` cannot be listed.
    When two spellings name one version ("7" and "007"), the last in name order wins here; TF Serving keeps
    whichever its directory listing gives last (an unsorted order), so such a pair is best avoided."""
    found: dict[int, Path] = {}
    for path in sorted(model_dir.iterdir(), key=lambda p: p.name):
        version = version_of(path.name)
        if version is not None and path.is_dir():
            found[version] = path
    return dict(sorted(found.items()))


def is_complete(version_dir: Path) -> bool:
    """A published version holds its SavedModel (`mnist-train` publishes by renaming a finished directory)."""
    return (version_dir / SAVED_MODEL_FILE).is_file()

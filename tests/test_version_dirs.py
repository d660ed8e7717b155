"""What counts as a model version directory: one rule (TF Serving's, in training/contract.py) that the
export, the model server, the ops CLI and the local stack all follow."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.local import stack
from serving.local_server import model_manager
from serving.ops import versions
from training import contract

MAX = 2**63 - 1
# name on disk -> the version TF Serving reads from it (None: not a version)
NAMES = {
    "0": 0,  # TF Serving serves a directory 0
    "1": 1,
    "007": 7,
    "7": 7,  # two spellings of 7: the last in name order ("7") wins, as in TF Serving
    str(MAX): MAX,
    str(MAX + 1): None,  # does not fit in an int64
    ".tmp-1f2e": None,  # an export in progress
    "latest": None,
    "1.5": None,
    "-3": None,  # TF Serving would parse it; nothing here writes it (documented narrowing)
    "\u0663": None,  # an Arabic-Indic three: str.isdigit() says yes, TF Serving says no
}


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    model = tmp_path / "mnist"
    for name in NAMES:
        (model / name).mkdir(parents=True)
        (model / name / contract.SAVED_MODEL_FILE).write_bytes(b"x")
    (model / "12").write_bytes(b"a file is not a version directory")
    (model / "3").mkdir()  # a version directory without its SavedModel: not published
    return model


def test_the_rule_is_tf_servings():
    for name, version in NAMES.items():
        assert contract.version_of(name) == version, name
    assert contract.version_of("") is None


def test_every_component_sees_the_same_versions(model_dir: Path):
    published = {v for v in NAMES.values() if v is not None}
    every = published | {3}
    assert set(contract.version_dirs(model_dir)) == every
    assert contract.version_dirs(model_dir)[7].name == "7"
    assert set(model_manager.version_dirs(model_dir)) == every
    assert model_manager.version_dirs(model_dir)[7].name == "7"
    assert [v.version for v in versions.scan(model_dir)] == sorted(published)
    assert versions.find(model_dir, 7).path.name == "7"
    assert stack.model_versions(model_dir.parent, "mnist") == sorted(published)


def test_the_export_numbers_after_every_version_directory(model_dir: Path):
    from training.export import existing_versions  # imports TensorFlow

    assert existing_versions(model_dir) == sorted({v for v in NAMES.values() if v is not None} | {3})
    assert existing_versions(model_dir / "missing") == []

"""ModelManager's version policy on a real directory tree, with a recording loader in place of TensorFlow:
the order of loads and unloads (availability preserving), failures, labels. Fast and deterministic."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.protobuf import text_format

from serving.local_server.config import ModelServerConfig
from serving.local_server.errors import ServingError
from serving.local_server.model_manager import ModelManager


class RecordingLoader:
    def __init__(self, broken: set[int] = frozenset()) -> None:
        self.events: list[tuple[str, int]] = []
        self.broken = broken

    def load(self, name: str, version: int, path: Path, config) -> tuple[str, int]:
        assert path.name.lstrip("0") == str(version)
        self.events.append(("load", version))
        if version in self.broken:
            raise ServingError(grpc.StatusCode.DATA_LOSS, f"version {version} is corrupt")
        return (name, version)

    def unload(self, servable: tuple[str, int]) -> None:
        self.events.append(("unload", servable[1]))


def config_for(base: Path, policy: str = "", labels: dict[str, int] | None = None) -> ModelServerConfig:
    label_text = " ".join(f'version_labels {{ key: "{k}" value: {v} }}' for k, v in (labels or {}).items())
    text = f'model_config_list {{ config {{ name: "m" base_path: "{base}" {policy} {label_text} }} }}'
    return text_format.Parse(text, ModelServerConfig())


def make_versions(base: Path, *versions: int) -> None:
    for version in versions:
        (base / str(version)).mkdir(parents=True)


def states(manager: ModelManager) -> dict[int, str]:
    return {s.version: s.state for s in manager.model_status("m")}


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return tmp_path / "m"


def manager_for(loader: RecordingLoader, **kwargs) -> ModelManager:
    return ModelManager(loader=loader.load, unloader=loader.unload, file_system_poll_wait_seconds=0, **kwargs)


def test_latest_policy_loads_the_new_version_before_unloading_the_old(base):
    make_versions(base, 1)
    loader = RecordingLoader()
    manager = manager_for(loader)
    manager.start(config_for(base))
    make_versions(base, 2)
    manager.poll_now()
    assert loader.events == [("load", 1), ("load", 2), ("unload", 1)]
    assert states(manager) == {2: "AVAILABLE", 1: "END"}
    assert manager.resolve("m") == ("m", 2)
    manager.stop()
    assert loader.events[-1] == ("unload", 2)


def test_a_failed_new_version_keeps_the_old_one_serving(base):
    make_versions(base, 1)
    loader = RecordingLoader(broken={2})
    manager = manager_for(loader)
    manager.start(config_for(base))
    make_versions(base, 2)
    manager.poll_now()
    manager.poll_now()  # not retried while the directory stays
    assert loader.events == [("load", 1), ("load", 2)]
    status = {s.version: s for s in manager.model_status("m")}
    assert status[1].state == "AVAILABLE"
    assert (status[2].state, status[2].error_code, status[2].error_message) == (
        "END",
        grpc.StatusCode.DATA_LOSS,
        "version 2 is corrupt",
    )
    assert manager.resolve("m") == ("m", 1)


def test_a_failed_version_is_retried_once_its_directory_is_replaced(base):
    make_versions(base, 1)
    loader = RecordingLoader(broken={2})
    manager = manager_for(loader)
    manager.start(config_for(base))
    make_versions(base, 2)
    manager.poll_now()
    (base / "2").rmdir()
    manager.poll_now()
    loader.broken = set()
    make_versions(base, 2)
    manager.poll_now()
    assert states(manager) == {2: "AVAILABLE", 1: "END"}


def test_latest_n_all_and_specific_policies(base):
    make_versions(base, 1, 2, 3, 4)
    manager = manager_for(RecordingLoader())
    manager.start(config_for(base, "model_version_policy { latest { num_versions: 2 } }"))
    assert states(manager) == {4: "AVAILABLE", 3: "AVAILABLE"}
    manager.reload_config(config_for(base, "model_version_policy { specific { versions: 1 versions: 3 } }"))
    manager.poll_now()
    assert states(manager) == {4: "END", 3: "AVAILABLE", 1: "AVAILABLE"}
    manager.reload_config(config_for(base, "model_version_policy { all {} }"))
    manager.poll_now()
    assert set(states(manager).values()) == {"AVAILABLE"} and len(states(manager)) == 4


def test_an_emptied_base_path_unloads_but_a_vanished_one_does_not(base):
    make_versions(base, 1)
    manager = manager_for(RecordingLoader())
    manager.start(config_for(base))
    (base / "1").rmdir()
    base.rmdir()
    manager.poll_now()
    assert states(manager) == {1: "AVAILABLE"}  # the base path is gone: keep serving what is loaded
    base.mkdir()
    manager.poll_now()
    assert states(manager) == {1: "END"}


def test_labels_follow_tf_serving_rules(base):
    make_versions(base, 1, 2)
    manager = manager_for(RecordingLoader(), allow_version_labels_for_unavailable_models=True)
    only_1 = "model_version_policy { specific { versions: 1 } }"
    manager.start(config_for(base, only_1, {"stable": 1, "canary": 9}))  # new labels: allowed by the flag
    assert manager.resolve("m", label="stable") == ("m", 1)
    with pytest.raises(ServingError) as caught:
        manager.resolve("m", label="canary")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(ServingError) as caught:  # moving a label to an unavailable version: never
        manager.reload_config(config_for(base, only_1, {"stable": 2, "canary": 9}))
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert manager.resolve("m", label="stable") == ("m", 1)
    with pytest.raises(ServingError) as caught:
        manager.resolve("m", label="nope")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_labels_at_start_need_the_flag(base):
    make_versions(base, 1)
    manager = manager_for(RecordingLoader())
    with pytest.raises(ServingError) as caught:
        manager.start(config_for(base, labels={"stable": 1}))
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_a_model_removed_and_added_back_is_loaded_again_before_reload_returns(base):
    make_versions(base, 1)
    loader = RecordingLoader()
    manager = manager_for(loader)
    manager.start(config_for(base))
    empty = text_format.Parse("model_config_list {}", ModelServerConfig())
    manager.reload_config(empty)
    manager.poll_now()
    assert states(manager) == {1: "END"}
    manager.reload_config(config_for(base))  # waits for the (again) new model
    assert states(manager) == {1: "AVAILABLE"}
    assert loader.events == [("load", 1), ("unload", 1), ("load", 1)]
    manager.stop()


def test_a_failed_version_fixed_in_place_is_retried_when_a_config_names_it_again(base):
    """A promote that failed is undone (the version leaves the config); once the files are fixed, the next
    config naming it loads it again, as TF Serving does: the failure is forgotten when it leaves the aspired
    set, not only when its directory goes away."""
    make_versions(base, 1, 2)
    loader = RecordingLoader(broken={2})
    manager = manager_for(loader)
    only_1 = "model_version_policy { specific { versions: 1 } }"
    both = "model_version_policy { specific { versions: 1 versions: 2 } }"
    manager.start(config_for(base, only_1))
    manager.reload_config(config_for(base, both))
    manager.poll_now()
    assert states(manager) == {2: "END", 1: "AVAILABLE"}
    manager.reload_config(config_for(base, only_1))  # the failed promote undone
    loader.broken = set()  # the files fixed in place: the directory never went away
    manager.reload_config(config_for(base, both))  # no poll in between: the reload alone forgets the failure
    manager.poll_now()
    assert states(manager) == {2: "AVAILABLE", 1: "AVAILABLE"}
    assert loader.events == [("load", 1), ("load", 2), ("load", 2)]
    manager.stop()

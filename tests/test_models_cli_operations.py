"""mnist-models' label moves (serving.ops.operations) through the real gRPC client, against in-process fake
replicas: what the replicas, the config file and the history hold when something fails half-way."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from tensorflow_serving.apis import get_model_status_pb2, model_management_pb2, model_service_pb2_grpc

from serving.ops import model_config
from serving.ops.config_file import ConfigFile
from serving.ops.errors import ConfigError, LoadFailed, NothingToRollBack, ServerError
from serving.ops.model_config import ModelServerConfig
from serving.ops.operations import Operator
from serving.ops.server import ModelServers, VersionState
from tests.test_models_cli_config import config_with, fake_version

GOOD = {"test_accuracy": 0.995, "dataset": "mnist"}
LATE_S = 2.0  # how late a replica told to answer late answers (the test's deadline is a quarter of it)


class FakeReplica(model_service_pb2_grpc.ModelServiceServicer):
    """A model server replica without TensorFlow. A push loads the listed versions at once: AVAILABLE, or
    END with `broken[v]` as its error; a version in `stuck` keeps its state (a server that does not try it
    again). With `refuse` set, it rejects every push; `after_push` runs after each accepted one."""

    def __init__(self) -> None:
        self.address = ""
        self.states: dict[int, VersionState] = {1: VersionState(1, "AVAILABLE")}
        self.pushed: list[ModelServerConfig] = []
        self.refuse = ""
        self.broken: dict[int, str] = {}
        self.stuck: set[int] = set()
        self.after_push: Callable[[], None] | None = None
        self.answer_late = (
            threading.Event()
        )  # set: the next push applies, then its answer misses the deadline

    def GetModelStatus(self, request, context):
        response = get_model_status_pb2.GetModelStatusResponse()
        for state in self.states.values():
            status = response.model_version_status.add(
                version=state.version, state=get_model_status_pb2.ModelVersionStatus.State.Value(state.state)
            )
            status.status.error_code = state.error_code
            status.status.error_message = state.error_message
        return response

    def HandleReloadConfigRequest(self, request, context):
        response = model_management_pb2.ReloadConfigResponse()
        if self.refuse:
            response.status.error_code = grpc.StatusCode.UNAVAILABLE.value[0]
            response.status.error_message = self.refuse
            return response
        config = ModelServerConfig()
        config.CopyFrom(request.config)
        self.pushed.append(config)
        listed = model_config.versions(config, "mnist")
        for version in listed:
            if version in self.stuck:
                continue
            if version in self.broken:
                self.states[version] = VersionState(version, "END", 3, self.broken[version])
            else:
                self.states[version] = VersionState(version, "AVAILABLE")
        for version, state in list(self.states.items()):
            if version not in listed and state.state == "AVAILABLE":
                self.states[version] = VersionState(version, "END")
        if self.after_push is not None:
            self.after_push()
        if self.answer_late.is_set():
            self.answer_late.clear()
            time.sleep(LATE_S)
        return response

    def labels(self) -> dict[str, int]:
        return model_config.labels(self.pushed[-1], "mnist")


@pytest.fixture
def replicas() -> Iterator[list[FakeReplica]]:
    fakes, servers = [FakeReplica(), FakeReplica()], []
    for fake in fakes:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(fake, server)
        fake.address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
        server.start()
        servers.append(server)
    yield fakes
    for server in servers:
        server.stop(None)


class Setup:
    """A config file listing `versions` with `stable` -> 1, versions 1-3 on disk, the replicas given."""

    def __init__(self, root: Path, fakes: list[FakeReplica], versions: list[int], labels: dict[str, int]):
        self.model_dir = root / "models" / "mnist"
        for version in (1, 2, 3):
            fake_version(self.model_dir, version, GOOD)
        self.config_file = ConfigFile(root / "models.config")
        self.config_file.write(config_with(versions, labels))
        for fake in fakes:
            fake.states.update({v: VersionState(v, "AVAILABLE") for v in versions})
        self.servers = ModelServers(",".join(fake.address for fake in fakes), timeout_s=5)
        self.said: list[str] = []

    def operator(self, *, load_timeout_s: float = 10.0) -> Operator:
        return Operator(
            config_file=self.config_file,
            client=self.servers,
            model_name="mnist",
            model_dir=self.model_dir,
            say=self.said.append,
            load_timeout_s=load_timeout_s,
        )

    def file_labels(self) -> dict[str, int]:
        return model_config.labels(self.config_file.read(), "mnist")


@pytest.fixture
def make_setup(tmp_path: Path, replicas: list[FakeReplica]) -> Iterator[Callable[..., Setup]]:
    made: list[Setup] = []

    def make(versions: list[int], labels: dict[str, int], fakes: list[FakeReplica] | None = None) -> Setup:
        made.append(Setup(tmp_path, replicas if fakes is None else fakes, versions, labels))
        return made[-1]

    yield make
    for setup in made:
        setup.servers.close()


def promote(operator: Operator, version: int) -> None:
    operator.promote(version, min_accuracy=0.99, force=False)


# -- the history --

BAD_HISTORIES = [
    '{"models": {"mnist": {"previous_stable": [1,], "events": []}}}',  # not JSON (a hand edit)
    '{"models": {"mnist": []}}',
    '{"models": {"mnist": {"previous_stable": "abc", "events": 5}}}',
    '{"models": {"mnist": {"previous_stable": [1, "2"], "events": []}}}',
    '{"models": {"mnist": {"previous_stable": [1], "events": ["promote"]}}}',
]


@pytest.mark.parametrize("text", BAD_HISTORIES)
@pytest.mark.parametrize("command", ["promote", "rollback", "retire"])
def test_a_bad_history_stops_a_command_before_anything_changes(make_setup, replicas, text, command):
    setup = make_setup([1, 2, 3], {"stable": 3})
    setup.config_file.history_path.write_text(text)
    before = setup.config_file.path.read_bytes()
    operator = setup.operator()
    run = {
        "promote": lambda: promote(operator, 2),
        "rollback": operator.rollback,
        "retire": operator.retire,
    }[command]
    with pytest.raises(ConfigError, match="history") as failed:
        run()
    assert failed.value.exit_code == 3
    assert setup.config_file.path.read_bytes() == before
    assert [fake.pushed for fake in replicas] == [[], []]


def test_a_history_that_cannot_be_written_after_the_move_says_the_label_moved(make_setup, replicas):
    setup = make_setup([1], {"stable": 1})
    history = setup.config_file.history_path

    def history_becomes_unwritable() -> None:  # e.g. the disk filled up during the push
        history.mkdir(exist_ok=True)

    replicas[0].after_push = history_becomes_unwritable
    with pytest.raises(ConfigError) as failed:
        promote(setup.operator(), 2)
    assert "stable moved 1 -> 2 (config file and server)" in failed.value.message
    assert f"cannot write {history}" in failed.value.message
    assert setup.file_labels() == {"stable": 2}
    assert [fake.labels() for fake in replicas] == [{"stable": 2}, {"stable": 2}]


def test_a_history_missing_a_models_lists_is_filled_in(make_setup, replicas):
    setup = make_setup([1], {"stable": 1})
    setup.config_file.history_path.write_text('{"models": {"mnist": {}}}')
    promote(setup.operator(), 2)
    saved = json.loads(setup.config_file.history_path.read_text())["models"]["mnist"]
    assert saved["previous_stable"] == [1]
    assert [event["action"] for event in saved["events"]] == ["promote"]


# -- several replicas --


def test_a_push_one_replica_refuses_is_undone_on_the_replicas_that_took_it(make_setup, replicas):
    first, second = replicas
    setup = make_setup([1, 2], {"stable": 1})
    before = setup.config_file.read()
    second.refuse = "replica is shutting down"
    with pytest.raises(ServerError) as failed:
        promote(setup.operator(), 2)
    message = failed.value.message
    assert f"model server {second.address} rejected the config: replica is shutting down" in message
    assert f"the previous config is back on {first.address}" in message
    assert first.pushed[-1] == before, "the replica that took the change has the previous config again"
    assert setup.config_file.read() == before


def test_a_replica_whose_push_timed_out_gets_the_previous_config_too(make_setup, replicas):
    """A deadline says nothing of whether the push applied: the replica may serve the new config, so it gets
    the previous one back like those that took it."""
    first, second = replicas
    setup = make_setup([1, 2], {"stable": 1})
    setup.servers.close()
    setup.servers = ModelServers(f"{first.address},{second.address}", timeout_s=LATE_S / 4)
    before = setup.config_file.read()
    second.answer_late.set()
    with pytest.raises(ServerError) as failed:
        promote(setup.operator(), 2)
    assert "did not answer HandleReloadConfigRequest" in failed.value.message
    assert f"the previous config is back on {first.address}, {second.address}" in failed.value.message
    assert second.pushed[-1] == before, "the replica that may have taken the change has the previous config"
    assert first.pushed[-1] == before
    assert setup.config_file.read() == before


def test_an_undo_that_fails_too_names_the_replica_left_changed(make_setup, replicas):
    first, second = replicas
    setup = make_setup([1, 2], {"stable": 1})
    second.refuse = "replica is shutting down"

    def refuse_from_now_on() -> None:
        first.refuse = "overloaded"

    first.after_push = refuse_from_now_on
    with pytest.raises(ServerError) as failed:
        promote(setup.operator(), 2)
    assert (
        f"putting the previous config back on {first.address} failed (model server {first.address} "
        "rejected the config: overloaded): it serves the new config"
    ) in failed.value.message
    assert first.labels() == {"stable": 2}
    assert setup.file_labels() == {"stable": 1}


# -- loading --


def test_a_version_whose_earlier_load_error_stays_is_reported_with_it(make_setup, replicas):
    """The server keeps an earlier END-with-error and never tries the version again: the wait ends with
    that error, not a bare 'not AVAILABLE (END)'."""
    setup = make_setup([1], {"stable": 1})
    for fake in replicas:
        fake.states[2] = VersionState(2, "END", 3, "truncated variables")
        fake.stuck.add(2)
    with pytest.raises(LoadFailed) as failed:
        promote(setup.operator(load_timeout_s=0.5), 2)
    assert "failed to load before (truncated variables)" in "\n".join(setup.said)
    assert "failed to load earlier (truncated variables)" in failed.value.message
    assert "previous config restored" in failed.value.message
    assert failed.value.exit_code == 7
    assert setup.file_labels() == {"stable": 1}


# -- rollback --


def test_rollback_skips_earlier_versions_no_longer_on_disk(make_setup, replicas):
    setup = make_setup([1, 2], {"stable": 2})
    setup.config_file.history_path.write_text(
        json.dumps({"models": {"mnist": {"previous_stable": [1, 7, 9], "events": []}}})
    )
    setup.operator().rollback()
    assert "skipped version(s) 9, 7: no longer on disk" in "\n".join(setup.said)
    assert setup.file_labels() == {"stable": 1}
    assert [fake.labels() for fake in replicas] == [{"stable": 1}, {"stable": 1}]
    assert setup.config_file.read_history().previous_stable("mnist") == []


def test_rollback_with_only_deleted_versions_left_has_nothing_to_roll_back_to(make_setup):
    setup = make_setup([1, 2], {"stable": 2})
    setup.config_file.history_path.write_text(
        json.dumps({"models": {"mnist": {"previous_stable": [7], "events": []}}})
    )
    with pytest.raises(NothingToRollBack, match=r"skipped version\(s\) 7: no longer on disk"):
        setup.operator().rollback()
    assert setup.file_labels() == {"stable": 2}

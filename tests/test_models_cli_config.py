"""mnist-models' config logic without a server: pure functions on ModelServerConfig, the config file's atomic
writes and lock, the rollback history, versions on disk and the accuracy gate."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving.ops import model_config, versions
from serving.ops.config_file import ConfigFile, History, write_atomic
from serving.ops.errors import ConfigError, QualityGateFailed, VersionNotFound
from serving.ops.settings import Settings

SERVING = Path(__file__).resolve().parents[1] / "serving"


def config_with(versions_: list[int], labels: dict[str, int]) -> model_server_config_pb2.ModelServerConfig:
    config = model_config.parse((SERVING / "models.config").read_text())
    model = model_config.find_model(config, "mnist")
    del model.model_version_policy.specific.versions[:]
    model.model_version_policy.specific.versions.extend(versions_)
    model.version_labels.clear()
    model.version_labels.update(labels)
    return config


# -- pure functions --


def test_changes_return_new_configs_and_keep_the_input():
    config = config_with([1], {"stable": 1})
    before = config.SerializeToString()
    loading = model_config.with_versions(config, "mnist", [1, 2])
    labelled = model_config.with_label(loading, "mnist", "stable", 2)
    assert config.SerializeToString() == before
    assert model_config.versions(loading, "mnist") == [1, 2]
    assert model_config.labels(loading, "mnist") == {"stable": 1}
    assert model_config.labels(labelled, "mnist") == {"stable": 2}
    model_config.check(labelled, "mnist")


def test_a_label_cannot_point_at_an_unlisted_version():
    config = config_with([1], {"stable": 1})
    with pytest.raises(ConfigError, match="not listed"):
        model_config.with_label(config, "mnist", "stable", 2)


def test_a_labelled_version_cannot_be_unloaded():
    config = config_with([1, 2], {"stable": 1, "canary": 2})
    with pytest.raises(ConfigError, match=r"labelled version\(s\) \[2\]"):
        model_config.with_versions(config, "mnist", [1])
    assert model_config.versions(model_config.with_versions(config, "mnist", [2, 1, 1]), "mnist") == [1, 2]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model_config_list { config { name: 'mnist' ", "is not a ModelServerConfig"),
        ("custom_model_config { }", "no model_config_list"),
        (
            "model_config_list { config { name: 'other' base_path: '/m' } }",
            "'mnist' is not in the config",
        ),
        ("model_config_list { config { name: 'mnist' base_path: '/m' } }", "specific"),
        (
            "model_config_list { config { name: 'mnist' "
            "model_version_policy { latest { num_versions: 2 } } } }",
            "it has latest",
        ),
        (
            "model_config_list { config { name: 'mnist' model_version_policy { specific { } } } }",
            "no versions",
        ),
        (
            "model_config_list { config { name: 'mnist' model_version_policy { specific { versions: 1 } } "
            "version_labels { key: 'stable' value: 3 } } }",
            "label 'stable' points at version 3",
        ),
        (  # the server refuses a config naming a model twice
            "model_config_list { config { name: 'mnist' model_version_policy { specific { versions: 1 } } } "
            "config { name: 'other' } config { name: 'other' } }",
            "model 'other' is listed 2 times",
        ),
    ],
)
def test_check_names_the_problem(text, message):
    with pytest.raises(ConfigError, match=message):
        model_config.check(model_config.parse(text), "mnist")


def test_with_base_path_follows_the_model_base_path_layout():
    config = config_with([1], {"stable": 1})
    assert model_config.find_model(
        model_config.with_base_path(config, "/data/models/"), "mnist"
    ).base_path == ("/data/models/mnist")
    assert model_config.find_model(
        model_config.with_base_path(config, "gs://bucket/m"), "mnist"
    ).base_path == ("gs://bucket/m/mnist")


def test_written_text_round_trips():
    config = config_with([1, 3], {"stable": 3, "canary": 1})
    text = model_config.to_text(config)
    assert text.startswith("# ")
    parsed = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(text, parsed)
    assert parsed == config


# -- the file --


def test_read_errors_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        ConfigFile(tmp_path / "missing.config").read()
    binary = tmp_path / "binary.config"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError):
        ConfigFile(binary).read()


def test_write_keeps_permissions_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "models.config"
    path.write_text("old")
    path.chmod(0o640)
    write_atomic(path, b"new")
    assert path.read_text() == "new"
    assert path.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models.config"]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another account")
def test_a_write_by_root_keeps_the_owner(tmp_path):
    """The server's account must still read the file after an operator rewrote it with sudo."""
    path = tmp_path / "models.config"
    path.write_text("old")
    os.chown(path, 65534, 65534)  # nobody, standing for the server's account
    path.chmod(0o600)
    write_atomic(path, b"new")
    status = path.stat()
    assert (status.st_uid, status.st_gid, status.st_mode & 0o7777) == (65534, 65534, 0o600)


def test_a_config_behind_a_symlink_is_changed_where_it_lives(tmp_path):
    """/etc/tfserving/models.config -> the file the server reads: the change goes to that file, the link
    stays, and history and lock sit beside the real file (one lock, whichever path an operator names)."""
    real = tmp_path / "repo" / "models.config"
    real.parent.mkdir()
    ConfigFile(real).write(config_with([1], {"stable": 1}))
    (tmp_path / "etc").mkdir()
    link = tmp_path / "etc" / "models.config"
    link.symlink_to("../repo/models.config")
    through_link = ConfigFile(link)
    with through_link.locked():
        through_link.write(config_with([1, 2], {"stable": 2}))
        through_link.write_history(History())
    assert link.is_symlink()
    assert model_config.labels(ConfigFile(real).read(), "mnist") == {"stable": 2}
    assert sorted(p.name for p in real.parent.iterdir()) == [
        "models.config",
        "models.config.history.json",
        "models.config.lock",
    ]
    assert [p.name for p in link.parent.iterdir()] == ["models.config"]


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "models.config"
    path.write_text("old")
    with pytest.raises(TypeError):
        write_atomic(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models.config"]


def _add_version_under_lock(path: str, version: int) -> None:
    config_file = ConfigFile(Path(path))
    with config_file.locked():
        config = config_file.read()
        listed = model_config.versions(config, "mnist")
        time.sleep(0.01)  # widen the read-change-write window: without the lock, updates would be lost
        config_file.write(model_config.with_versions(config, "mnist", [*listed, version]))


def _read_continuously(path: str, stop, failures, reads, reading) -> None:
    config_file = ConfigFile(Path(path))
    while not stop.is_set():
        try:
            model_config.check(config_file.read(), "mnist")
        except ConfigError as error:
            failures.append(error.message)
        reads.value += 1
        reading.set()


def test_concurrent_writers_lose_no_update_and_readers_never_see_a_torn_file(tmp_path):
    path = tmp_path / "models.config"
    ConfigFile(path).write(config_with([1], {"stable": 1}))
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        failures, stop, reads = manager.list(), manager.Event(), manager.Value("i", 0)
        reading = manager.Event()
        reader = context.Process(target=_read_continuously, args=(str(path), stop, failures, reads, reading))
        reader.start()
        assert reading.wait(60), "the reader never read"  # the writers start while it is reading
        writers = [context.Process(target=_add_version_under_lock, args=(str(path), v)) for v in range(2, 8)]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(60)
            assert writer.exitcode == 0
        stop.set()
        reader.join(60)
        assert list(failures) == []
        assert reads.value > 0
    assert model_config.versions(ConfigFile(path).read(), "mnist") == list(range(1, 8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models.config", "models.config.lock"]


def test_the_lock_times_out_with_a_clear_error(tmp_path):
    config_file = ConfigFile(tmp_path / "models.config")
    other = ConfigFile(tmp_path / "models.config")
    with (
        config_file.locked(),
        pytest.raises(ConfigError, match="another mnist-models is changing"),
        other.locked(timeout_s=0.2),
    ):
        pass


# -- history --


def test_history_round_trips_and_pops_the_latest_different_version(tmp_path):
    config_file = ConfigFile(tmp_path / "models.config")
    history = config_file.read_history()
    for version in (1, 2, 3):
        history.push_stable("mnist", version)
    history.record("mnist", "promote", version=4)
    config_file.write_history(history)
    assert config_file.history_path.name == "models.config.history.json"
    again = config_file.read_history()
    assert again.previous_stable("mnist") == [1, 2, 3]
    assert again.pop_stable("mnist", current=3) == 2  # 3 is what is stable now: skipped
    assert again.pop_stable("mnist", current=2) == 1
    assert again.pop_stable("mnist", current=1) is None
    assert again.events("mnist")[0]["action"] == "promote"


def test_a_corrupt_history_is_a_config_error(tmp_path):
    config_file = ConfigFile(tmp_path / "models.config")
    config_file.history_path.write_text("[1, 2")
    with pytest.raises(ConfigError, match="cannot read history"):
        config_file.read_history()
    config_file.history_path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not an mnist-models history"):
        config_file.read_history()


def test_history_is_bounded():
    history = History()
    for version in range(200):
        history.push_stable("mnist", version)
        history.record("mnist", "promote", version=version)
    assert len(history.previous_stable("mnist")) == 50
    assert len(history.events("mnist")) == 50


# -- versions on disk --


def fake_version(model_dir: Path, version: int | str, metrics: object | None = None) -> Path:
    path = model_dir / str(version)
    (path / "assets.extra").mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"")
    if metrics is not None:
        (path / "assets.extra" / "metrics.json").write_text(json.dumps(metrics))
    return path


def test_scan_finds_complete_numbered_versions_only(tmp_path):
    fake_version(tmp_path, 2, {"test_accuracy": 0.991, "created_at": "2026-01-01T00:00:00+00:00"})
    fake_version(tmp_path, 10, {"test_accuracy": 0.95})
    fake_version(tmp_path, ".tmp-abc", {"test_accuracy": 1.0})  # an export in progress
    fake_version(tmp_path, "latest", {"test_accuracy": 1.0})
    (tmp_path / "3").mkdir()  # no saved_model.pb
    found = versions.scan(tmp_path)
    assert [v.version for v in found] == [2, 10]
    assert found[0].accuracy == pytest.approx(0.991)
    assert found[0].created_at == "2026-01-01T00:00:00+00:00"
    fake_version(tmp_path, "0007", {"test_accuracy": 0.99})  # TF Serving reads zero-padded names too
    assert versions.find(tmp_path, 7).path.name == "0007"
    with pytest.raises(VersionNotFound, match=r"version 3 not found .* \(versions on disk: 2, 7, 10\)"):
        versions.find(tmp_path, 3)
    with pytest.raises(ConfigError, match="model directory .* not found"):
        versions.scan(tmp_path / "nope")


@pytest.mark.parametrize(
    ("metrics", "min_accuracy", "passes"),
    [
        ({"test_accuracy": 0.995}, 0.99, True),
        ({"test_accuracy": 0.99}, 0.99, True),
        ({"test_accuracy": 0.9899}, 0.99, False),
        ({"test_accuracy": "0.999"}, 0.99, False),  # not a number: unknown, refused
        ({"accuracy": 0.999}, 0.99, False),
        (None, 0.0, False),  # no metrics.json at all
        ({"test_accuracy": float("nan")}, 0.0, False),  # a diverged run's metric: unknown, refused
        ({"test_accuracy": float("inf")}, 0.99, False),
    ],
)
def test_the_quality_gate(tmp_path, metrics, min_accuracy, passes):
    version = versions.find(tmp_path, int(fake_version(tmp_path, 1, metrics).name))
    if passes:
        assert ">=" in versions.check_quality(version, min_accuracy=min_accuracy, force=False)
    else:
        with pytest.raises(QualityGateFailed, match="use --force"):
            versions.check_quality(version, min_accuracy=min_accuracy, force=False)
        assert "because of --force" in versions.check_quality(version, min_accuracy=min_accuracy, force=True)


def retrained(test: float, holdout: float, *, base_holdout: float, base_test: float, base_version: int = 1):
    """metrics.json of a version trained with feedback, which scored its baseline in the same run."""
    return {
        "test_accuracy": test,
        "dataset": "mnist",
        "feedback": {
            "snapshot_id": "20261130T120000Z-abc",
            "holdout_accuracy": holdout,
            "holdout_samples": 120,
            "baseline": {
                "version": base_version,
                "holdout_accuracy": base_holdout,
                "test_accuracy": base_test,
            },
        },
    }


@pytest.mark.parametrize(
    ("candidate", "passes", "refusal"),
    [
        # MNIST test accuracy against the version replaced (its own metrics.json: 0.9940), margin 0.002
        ({"test_accuracy": 0.9920, "dataset": "mnist"}, True, None),  # just within the margin
        ({"test_accuracy": 0.9919, "dataset": "mnist"}, False, "0.9919 is 0.0021 below 0.9940 of version 1"),
        ({"test_accuracy": 0.9960, "dataset": "mnist-sample"}, False, "scored on different test sets"),
        # trained with feedback: the baseline figures of the same run count, and the holdout must improve
        (retrained(0.9930, 0.81, base_holdout=0.80, base_test=0.9932), True, None),
        (retrained(0.9930, 0.80, base_holdout=0.80, base_test=0.9932), False, "0.8000 does not beat 0.8000"),
        (
            retrained(0.9911, 0.95, base_holdout=0.40, base_test=0.9932),
            False,
            "0.9911 is 0.0021 below 0.9932",
        ),
        (
            retrained(0.9930, 0.95, base_holdout=0.40, base_test=0.99, base_version=7),
            False,
            "against version 7",
        ),
    ],
)
def test_the_gate_compares_with_the_version_it_replaces(tmp_path, candidate, passes, refusal):
    fake_version(tmp_path, 1, {"test_accuracy": 0.9940, "dataset": "mnist"})
    fake_version(tmp_path, 2, candidate)

    def gate(force: bool) -> str:
        return versions.quality_gate(tmp_path, 2, 1, min_accuracy=0.99, max_drop=0.002, force=force)

    if passes:
        assert "version 2: test accuracy" in gate(False)
        return
    with pytest.raises(QualityGateFailed, match="use --force") as refused:
        gate(False)
    assert refusal in str(refused.value)
    assert "because of --force" in gate(True)


def test_the_gate_without_a_stable_version_checks_the_threshold_only(tmp_path):
    fake_version(tmp_path, 2, retrained(0.9930, 0.10, base_holdout=0.80, base_test=0.9990))
    assert "0.9930 >= 0.9900" in versions.quality_gate(tmp_path, 2, None, min_accuracy=0.99, force=False)
    with pytest.raises(QualityGateFailed, match="version 9 it replaces is unknown"):
        versions.quality_gate(tmp_path, 2, 9, min_accuracy=0.99, force=False)


def test_a_stable_version_with_a_nan_accuracy_is_no_baseline(tmp_path):
    fake_version(tmp_path, 1, {"test_accuracy": float("nan"), "dataset": "mnist"})
    fake_version(tmp_path, 2, {"test_accuracy": 0.991, "dataset": "mnist"})
    with pytest.raises(QualityGateFailed, match=r"version 1 it replaces is unknown \(test_accuracy nan"):
        versions.quality_gate(tmp_path, 2, 1, min_accuracy=0.99, force=False)


@pytest.mark.parametrize("value", ["nan", "-0.1", "1.5", "high"])
def test_the_accuracy_settings_from_the_environment_are_range_checked(value):
    for name in ("MODEL_MIN_ACCURACY", "MODEL_MAX_ACCURACY_DROP"):
        with pytest.raises(ValueError, match=f"{name} must be a number between 0 and 1"):
            Settings.from_env({name: value})
    assert Settings.from_env({"MODEL_MIN_ACCURACY": "0.5"}).min_accuracy == 0.5


def test_unreadable_metrics_are_reported_not_raised(tmp_path):
    path = fake_version(tmp_path, 1)
    (path / "assets.extra" / "metrics.json").write_text("{broken")
    (version,) = versions.scan(tmp_path)
    assert version.accuracy is None and "unreadable" in version.metrics_problem


def test_the_cli_loads_the_official_stubs_without_tensorflows_runtime():
    """What keeps `mnist-models` at well under a second instead of the 5-20 s a TensorFlow import takes."""
    code = (
        "import sys\n"
        "from serving.ops.protos import skip_tensorflow_runtime\n"
        "assert skip_tensorflow_runtime()\n"
        "from serving.ops import server\n"
        "from tensorflow_serving.apis import predict_pb2\n"
        "assert 'tensorflow.core.framework.tensor_pb2' in sys.modules\n"
        "assert 'tensorflow.python' not in sys.modules, 'the TensorFlow runtime was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr

"""Feedback snapshots: the format (training/snapshot.py) and `mnist-train dataset export` against a real
Cassandra node (rows written with prepared statements into a keyspace of this module's own)."""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from training.snapshot import RECORD, SnapshotError, Spool, image_hash, is_holdout, load_snapshot, publish

KEYSPACE = "mnist_feedback_export"
EPOCH = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def image(seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, 784, dtype=np.uint8).tobytes()


def records(n: int, *, labels=None) -> np.ndarray:
    rows = np.zeros(n, dtype=RECORD)
    for i in range(n):
        data = image(i)
        label = (i % 10) if labels is None else labels[i]
        rows[i] = (image_hash(data), np.frombuffer(data, np.uint8), label, label, 1, i)
    return rows


def write(rows: np.ndarray, root: Path, **kw):
    defaults = {"holdout_percent": 20, "min_labels": 10, "source": {}, "window": {}, "counts": {}}
    return publish(rows, root, **{**defaults, **kw})


# -- the format -------------------------------------------------------------------------------------------
def test_a_snapshot_holds_both_sides_a_manifest_and_read_only_files(tmp_path):
    path, manifest = write(records(200), tmp_path)
    assert path.parent == tmp_path and path.name == manifest["id"] and not path.name.isdigit()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary directory left
    assert sorted(p.name for p in path.iterdir()) == ["holdout.npz", "manifest.json", "train.npz"]
    for file in path.iterdir():
        assert not file.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH), file
    loaded = load_snapshot(path)
    assert len(loaded.train_labels) + len(loaded.holdout_labels) == 200
    assert manifest["rows"]["train"] == len(loaded.train_labels) and manifest["rows"]["holdout"] > 20
    assert sum(manifest["per_digit"]["holdout"]) == len(loaded.holdout_labels)
    assert loaded.train_images.dtype == np.uint8 and loaded.train_images.shape[1:] == (28, 28)
    # every image is on the side its hash says, in both files
    for images, side in ((loaded.train_images, False), (loaded.holdout_images, True)):
        assert all(is_holdout(image_hash(im.tobytes()), 20) is side for im in images)
    assert manifest["warnings"] == []
    with np.load(path / "train.npz") as content:  # readable by NumPy alone
        assert sorted(content.files) == ["images", "labels", "model_versions", "predicted"]


def test_an_image_keeps_its_side_whatever_else_is_exported(tmp_path):
    first, _ = write(records(100), tmp_path / "a")
    second, _ = write(records(300), tmp_path / "b")  # the first 100 rows again, plus 200 more
    holdout_a = {im.tobytes() for im in load_snapshot(first).holdout_images}
    holdout_b = {im.tobytes() for im in load_snapshot(second).holdout_images}
    assert holdout_a and holdout_a <= holdout_b
    train_a = {im.tobytes() for im in load_snapshot(first).train_images}
    assert not train_a & holdout_b


def test_an_altered_snapshot_is_refused(tmp_path):
    path, _ = write(records(50), tmp_path)
    (path / "train.npz").chmod(0o644)
    with open(path / "train.npz", "r+b") as file:
        file.seek(100)
        file.write(b"\x00\x01")
    with pytest.raises(SnapshotError, match="sha256 differs"):
        load_snapshot(path)
    with pytest.raises(SnapshotError, match="not a feedback snapshot"):
        load_snapshot(tmp_path)


def rewrite(path: Path, side: str, change) -> None:
    """Alter a side's arrays (or its bytes) and put the new sha256 in the manifest, as a hand-built snapshot
    would be: the checksums agree, only the content is wrong."""
    file, manifest_path = path / f"{side}.npz", path / "manifest.json"
    file.chmod(0o644)
    manifest_path.chmod(0o644)
    if isinstance(change, bytes):
        file.write_bytes(change)
    else:
        with np.load(file) as content:
            arrays = dict(content)
        np.savez_compressed(file, **change(arrays))
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][file.name]["sha256"] = hashlib.sha256(file.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))


def with_label(value, dtype):
    def change(arrays):
        labels = arrays["labels"].astype(dtype)
        labels[0] = value
        return {**arrays, "labels": labels}

    return change


@pytest.mark.parametrize(
    ("side", "change", "message"),
    [
        ("train", with_label(10, np.uint8), "labels must be integers 0-9"),
        ("holdout", with_label(255, np.uint8), "labels must be integers 0-9"),
        ("train", with_label(-1, np.int64), "labels must be integers 0-9"),
        ("train", with_label(np.nan, np.float32), "labels must be integers 0-9"),
        ("train", lambda a: {**a, "labels": a["labels"].reshape(-1, 1)}, "labels must be integers 0-9"),
        ("train", lambda a: {"images": a["images"]}, "not a snapshot array file"),
        ("holdout", b"PK\x03\x04 cut short", "not a snapshot array file"),
    ],
)
def test_bad_labels_or_arrays_are_refused_whatever_the_checksums(tmp_path, side, change, message):
    path, _ = write(records(50), tmp_path)
    rewrite(path, side, change)
    with pytest.raises(SnapshotError, match=message):
        load_snapshot(path)


@pytest.mark.parametrize(
    "change",
    [lambda m: {**m, "files": []}, lambda m: {k: v for k, v in m.items() if k != "id"}],
)
def test_a_malformed_manifest_is_refused(tmp_path, change):
    path, _ = write(records(20), tmp_path)
    manifest_path = path / "manifest.json"
    manifest_path.chmod(0o644)
    manifest_path.write_text(json.dumps(change(json.loads(manifest_path.read_text()))))
    with pytest.raises(SnapshotError, match="malformed"):
        load_snapshot(path)


def test_a_snapshot_that_cannot_be_written_is_a_snapshot_error_and_leaves_nothing(tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", disk_full)
    with pytest.raises(SnapshotError, match=r"cannot write the snapshot \(No space left on device\)"):
        write(records(20), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_too_few_labels_or_a_missing_digit_is_a_warning_and_still_written(tmp_path):
    labels = [d for d in range(9) for _ in range(12)]  # no 9 at all; 108 rows
    path, manifest = write(records(108, labels=labels), tmp_path, min_labels=109)
    assert "only 108 labelled images (fewer than 109)" in manifest["warnings"][0]
    assert any("no train images of digit(s) 9" in w for w in manifest["warnings"])
    assert json.loads((path / "manifest.json").read_text())["warnings"] == manifest["warnings"]
    _, enough = write(records(108, labels=labels), tmp_path / "b", min_labels=108)
    assert not any("fewer than" in w for w in enough["warnings"])


def test_the_spool_keeps_the_latest_label_and_resumes_at_its_checkpoint(tmp_path):
    spool = Spool(tmp_path / "spool")
    assert spool.add(image(1), 3, 3, 1, 100) == ("new", False)
    assert spool.add(image(2), 4, 4, 1, 100) == ("new", False)
    assert spool.add(image(1), 5, 3, 1, 200) == ("replaced", True)  # a newer, different label
    assert spool.add(image(1), 3, 3, 1, 150) == ("kept", True)  # older than the one held
    spool.checkpoint(paging_state="ab")
    assert spool.add(image(3), 7, 7, 1, 100) == ("new", False)  # after the checkpoint: lost in a crash
    spool.close()
    resumed = Spool(tmp_path / "spool")
    assert resumed.records == 2 and resumed.state["paging_state"] == "ab"
    rows = resumed.rows()
    assert sorted(rows["label"].tolist()) == [4, 5]
    assert resumed.add(image(1), 5, 3, 1, 200) == ("kept", False)  # replaying the page changes nothing
    resumed.close()


@pytest.mark.parametrize(
    "damage",
    [
        lambda spool: (spool / "rows.bin").write_bytes((spool / "rows.bin").read_bytes()[: RECORD.itemsize]),
        lambda spool: (spool / "rows.bin").unlink(),
        lambda spool: (spool / "state.json").write_text("{not json"),
        lambda spool: (spool / "state.json").write_text("[]"),
    ],
    ids=["rows-cut", "rows-deleted", "state-garbage", "state-not-an-object"],
)
def test_a_damaged_spool_starts_over_instead_of_inventing_rows(tmp_path, damage):
    spool = Spool(tmp_path / "spool")
    spool.add(image(1), 3, 3, 1, 100)
    spool.add(image(2), 4, 4, 1, 100)
    spool.checkpoint(paging_state="ab")
    spool.close()
    damage(tmp_path / "spool")
    again = Spool(tmp_path / "spool")
    assert again.damaged and again.records == 0 and again.state == {} and len(again.rows()) == 0
    assert again.add(image(1), 3, 3, 1, 100) == ("new", False)
    again.close()
    (tmp_path / "file").write_text("x")  # the spool's name taken by a file
    taken = Spool(tmp_path / "file")
    assert taken.damaged and taken.directory.is_dir() and taken.records == 0
    taken.close()


# -- the export against Cassandra ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def feedback_keyspace(cassandra_session) -> str:
    from gateway.store.migrate import Migrator

    Migrator(cassandra_session, KEYSPACE).migrate()
    return KEYSPACE


@pytest.fixture
def feedback_rows(cassandra_session, feedback_keyspace):
    """Fills feedback_by_id: 60 distinct images (6 per digit) labelled inside the window, 5 of them labelled
    again later (3 with another digit), 3 labelled outside the window, 2 with an input of the wrong size."""
    cassandra_session.execute(f"TRUNCATE {feedback_keyspace}.feedback_by_id", timeout=60)
    insert = cassandra_session.prepare(
        f"INSERT INTO {feedback_keyspace}.feedback_by_id (id, label, digit, input, model_name, "
        "model_version, predicted_at, updated_at) VALUES (?, ?, ?, ?, 'mnist', 1, ?, ?)"
    )

    def add(data: bytes, label: int, when: dt.datetime) -> None:
        cassandra_session.execute(insert, [uuid.uuid1(), label, (label + 1) % 10, data, when, when])

    truth = {}
    for i in range(60):
        truth[image(i)] = i % 10
        add(image(i), i % 10, EPOCH + dt.timedelta(minutes=i))
    for i in range(5):  # the same picture again, labelled later: the later label wins
        label = (i % 10) if i < 2 else (i + 5) % 10
        truth[image(i)] = label
        add(image(i), label, EPOCH + dt.timedelta(hours=2, minutes=i))
    for i in range(3):
        add(image(1000 + i), 1, EPOCH - dt.timedelta(days=1))
    for i in range(2):
        add(b"\x00" * 10, 2, EPOCH + dt.timedelta(minutes=i))
    return truth


def export_env(cassandra_node) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("CASSANDRA_", "MODEL_", "FEEDBACK_"))}
    return {
        **keep,
        "CASSANDRA_HOSTS": cassandra_node.host,
        "CASSANDRA_PORT": str(cassandra_node.port),
        "CASSANDRA_USERNAME": cassandra_node.credentials.username,
        "CASSANDRA_PASSWORD": cassandra_node.credentials.password,
        "CASSANDRA_KEYSPACE": KEYSPACE,
    }


def export_env_without_node() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("CASSANDRA_", "MODEL_", "FEEDBACK_"))}


def mnist_train(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "training.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def only_snapshot(root: Path) -> Path:
    found = [p for p in root.iterdir() if not p.name.startswith(".")]
    assert len(found) == 1, found
    return found[0]


WINDOW = ["--since", "2026-11-01T00:00:00Z", "--until", "2026-11-02T00:00:00Z"]


def test_export_reads_every_page_keeps_the_latest_label_and_the_window(
    tmp_path, cassandra_node, feedback_rows
):
    result = mnist_train(
        "dataset",
        "export",
        "--snapshot-dir",
        str(tmp_path),
        "--page-size",
        "7",
        "--min-labels",
        "10",
        *WINDOW,
        env=export_env(cassandra_node),
    )
    assert result.returncode == 0, result.stderr
    path = only_snapshot(tmp_path)
    assert f"exported {path}" in result.stdout
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["rows"] == {
        "read": 70,
        "outside_window": 3,
        "invalid": 2,
        "duplicates": 5,
        "conflicting_labels": 3,
        "distinct": 60,
        "train": manifest["rows"]["train"],
        "holdout": 60 - manifest["rows"]["train"],
    }
    assert manifest["window"] == {
        "field": "updated_at",
        "since": "2026-11-01T00:00:00+00:00",
        "until": "2026-11-02T00:00:00+00:00",
    }
    assert manifest["source"] == {"table": f"{KEYSPACE}.feedback_by_id", "page_size": 7}
    snap = load_snapshot(path)
    got = {}
    for images, labels in (
        (snap.train_images, snap.train_labels),
        (snap.holdout_images, snap.holdout_labels),
    ):
        got.update({im.tobytes(): int(label) for im, label in zip(images, labels, strict=True)})
    assert got == feedback_rows
    assert not (tmp_path / ".export-in-progress").exists()


def test_an_interrupted_export_continues_where_it_stopped(tmp_path, cassandra_node, feedback_rows):
    env = export_env(cassandra_node)
    common = ["dataset", "export", "--page-size", "7", "--min-labels", "10", *WINDOW]
    whole = mnist_train(*common, "--snapshot-dir", str(tmp_path / "whole"), env=env)
    assert whole.returncode == 0, whole.stderr
    first = mnist_train(*common, "--snapshot-dir", str(tmp_path / "parts"), "--max-pages", "3", env=env)
    assert first.returncode == 0, first.stderr
    assert "stopped after 3 page(s), 21 rows read" in first.stderr
    state = json.loads((tmp_path / "parts" / ".export-in-progress" / "state.json").read_text())
    assert state["counts"]["read"] == 21 and state["paging_state"]
    rest = mnist_train(*common, "--snapshot-dir", str(tmp_path / "parts"), env=env)
    assert rest.returncode == 0, rest.stderr
    assert "resuming the export: 21 rows read before" in rest.stderr
    one = json.loads((only_snapshot(tmp_path / "whole") / "manifest.json").read_text())
    other = json.loads((only_snapshot(tmp_path / "parts") / "manifest.json").read_text())
    assert other["rows"] == one["rows"] and other["files"] == one["files"]  # the same bytes


def test_an_export_whose_checkpoint_was_damaged_starts_over(tmp_path, cassandra_node, feedback_rows):
    env = export_env(cassandra_node)
    common = ["dataset", "export", "--page-size", "7", "--min-labels", "10", *WINDOW]
    whole = mnist_train(*common, "--snapshot-dir", str(tmp_path / "whole"), env=env)
    assert whole.returncode == 0, whole.stderr
    first = mnist_train(*common, "--snapshot-dir", str(tmp_path / "parts"), "--max-pages", "3", env=env)
    assert first.returncode == 0, first.stderr
    (tmp_path / "parts" / ".export-in-progress" / "rows.bin").unlink()  # a careless clean-up
    rest = mnist_train(*common, "--snapshot-dir", str(tmp_path / "parts"), env=env)
    assert rest.returncode == 0, rest.stderr
    assert "the export in progress was damaged" in rest.stderr and "starting over" in rest.stderr
    one = json.loads((only_snapshot(tmp_path / "whole") / "manifest.json").read_text())
    other = json.loads((only_snapshot(tmp_path / "parts") / "manifest.json").read_text())
    assert other["rows"] == one["rows"] and other["files"] == one["files"]  # no invented blank rows


def test_a_short_snapshot_warns_on_stderr_and_is_still_written(tmp_path, cassandra_node, feedback_rows):
    result = mnist_train(
        "dataset",
        "export",
        "--snapshot-dir",
        str(tmp_path),
        "--min-labels",
        "61",
        *WINDOW,
        env=export_env(cassandra_node),
    )
    assert result.returncode == 0, result.stderr
    assert "warning: snapshot" in result.stderr and "only 60 labelled images (fewer than 61)" in result.stderr
    assert only_snapshot(tmp_path).is_dir()


@pytest.mark.parametrize(
    ("args", "env", "code", "message"),
    [
        (["--page-size", "5001"], {}, 1, "page size must be 1-5000, got 5001"),
        (["--page-size", "0"], {}, 2, "must be at least 1"),
        (["--holdout-percent", "100"], {}, 2, "must be 1-99"),
        (["--since", "yesterday"], {}, 1, "not an ISO-8601 time"),
        ([], {"CASSANDRA_KEYSPACE": "Bad-Name"}, 1, "CASSANDRA_KEYSPACE must match"),
        ([], {"CASSANDRA_PASSWORD": ""}, 1, "set both CASSANDRA_USERNAME and CASSANDRA_PASSWORD"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, cassandra_node, args, env, code, message):
    result = mnist_train(
        "dataset", "export", "--snapshot-dir", str(tmp_path), *args, env={**export_env(cassandra_node), **env}
    )
    assert result.returncode == code and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize("where", ["a-file", "a-file/below"])
def test_a_snapshot_directory_that_cannot_be_one_is_a_one_line_error(tmp_path, where):
    (tmp_path / "a-file").write_text("not a directory")
    env = {**export_env_without_node(), "CASSANDRA_PORT": "1"}  # refused before any connection
    result = mnist_train("dataset", "export", "--snapshot-dir", str(tmp_path / where), env=env, timeout=120)
    assert result.returncode == 1, result.stderr
    assert f"{tmp_path / where}: cannot use as the snapshot directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "window",
    [
        ["--since", "2026-12-01T00:00:00Z", "--until", "2026-11-01T00:00:00Z"],
        ["--since", "2026-11-01T00:00:00Z", "--until", "2026-11-01T00:00:00Z"],
        ["--since", "2999-01-01T00:00:00Z"],  # until defaults to now
    ],
)
def test_an_empty_window_is_refused_before_reading(tmp_path, window):
    env = {**export_env_without_node(), "CASSANDRA_PORT": "1"}  # refused before any connection
    result = mnist_train("dataset", "export", "--snapshot-dir", str(tmp_path), *window, env=env, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "is not before --until" in result.stderr and "no label can be in the window" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_largest_page_is_accepted(tmp_path, cassandra_node, feedback_rows):
    result = mnist_train(
        "dataset",
        "export",
        "--snapshot-dir",
        str(tmp_path),
        "--page-size",
        "5000",
        *WINDOW,
        env=export_env(cassandra_node),
    )
    assert result.returncode == 0, result.stderr


def test_an_unreachable_cassandra_is_a_clear_error(tmp_path, cassandra_node):
    from deploy.local.readiness import free_port

    env = {**export_env(cassandra_node), "CASSANDRA_PORT": str(free_port())}
    result = mnist_train("dataset", "export", "--snapshot-dir", str(tmp_path), env=env, timeout=120)
    assert result.returncode == 1 and "unreachable" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_feedback_training_needs_a_baseline_and_a_real_snapshot(tmp_path, mnist_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "FEEDBACK_"))}
    common = ["--data-dir", str(mnist_dir), "--model-base-path", str(tmp_path)]
    alone = mnist_train(*common, "--feedback", str(tmp_path), env=env)
    assert alone.returncode == 1 and "--feedback and --baseline go together" in alone.stderr
    missing = mnist_train(*common, "--feedback", str(tmp_path), "--baseline", "1", env=env)
    assert missing.returncode == 1 and "not a feedback snapshot (no manifest.json)" in missing.stderr
    latest = mnist_train(*common, "--feedback", "latest", "--baseline", "1", env=env)
    assert latest.returncode == 1 and "no snapshot directory" in latest.stderr


def test_training_refuses_a_snapshot_with_a_label_outside_0_9_before_training(tmp_path, mnist_dir):
    path, _ = write(records(50), tmp_path / "snapshots")
    rewrite(path, "train", with_label(10, np.uint8))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "FEEDBACK_"))}
    args = ["--data-dir", str(mnist_dir), "--model-base-path", str(tmp_path / "models")]
    result = mnist_train(*args, "--feedback", str(path), "--baseline", "1", env=env)
    assert result.returncode == 1, result.stderr
    assert "labels must be integers 0-9, 1 are not (e.g. 10)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_latest_is_the_newest_snapshot_whatever_else_the_directory_holds(tmp_path):
    from training.errors import TrainingError
    from training.feedback import resolve_snapshot

    older, _ = write(records(20), tmp_path, now=dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
    newer, _ = write(records(30), tmp_path, now=dt.datetime(2026, 11, 2, tzinfo=dt.UTC))
    for name in ("lost+found", "old", "zz-backup", f"{newer.name}-copy"):  # a volume's root, an operator's
        (tmp_path / name).mkdir()
    assert resolve_snapshot("latest", tmp_path).path == newer
    only_others = tmp_path / "others"
    (only_others / "lost+found").mkdir(parents=True)
    with pytest.raises(TrainingError, match="no snapshot in"):
        resolve_snapshot("latest", only_others)
    assert older.is_dir()


def test_an_interrupted_export_says_the_same_command_continues_it(tmp_path, monkeypatch, capsys):
    from training import cli, feedback_export

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(feedback_export, "export_snapshot", interrupted)
    assert cli.main(["dataset", "export", "--snapshot-dir", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert err == "mnist-train: interrupted; run the same command again to continue from the last page\n"


def test_the_snapshot_and_baseline_are_named_by_absolute_paths(tmp_path, monkeypatch):
    """metrics.json records both as a version's lineage: a path relative to where training ran is lost."""
    from training.feedback import resolve_baseline, resolve_snapshot

    path, _ = write(records(20), tmp_path / "snapshots")
    version_dir = tmp_path / "models" / "mnist" / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "saved_model.pb").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert resolve_snapshot(f"snapshots/{path.name}", None).path == path
    assert resolve_snapshot("latest", Path("snapshots")).path == path
    assert resolve_baseline("1", Path("models/mnist")) == (1, version_dir)
    assert resolve_baseline("models/mnist/1", Path("elsewhere")) == (1, version_dir)

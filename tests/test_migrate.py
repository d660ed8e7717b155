"""mnist-migrate on the real node: fresh apply, re-run, edited-file refusal, concurrent runs, CLI errors."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from gateway.replication import ReplicationError
from gateway.store.cluster import build_cluster
from gateway.store.migrate import (
    DEFAULT_MIGRATIONS_DIR,
    MigrationError,
    Migrator,
    Replication,
    load_migrations,
    split_statements,
)
from tests.fixtures.cassandra_node import qualified

_names = itertools.count()


@pytest.fixture
def migrations_dir(tmp_path):
    target = tmp_path / "migrations"
    shutil.copytree(DEFAULT_MIGRATIONS_DIR, target)
    return target


@pytest.fixture
def keyspace():
    return f"mig_{next(_names)}_{id(object()) % 10_000}"


def _tables(session, keyspace):
    rows = session.execute(
        "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (keyspace,)
    )
    return {row.table_name for row in rows}


def test_fresh_apply_creates_keyspace_tables_and_records_checksums(
    cassandra_session, migrations_dir, keyspace
):
    migrator = Migrator(cassandra_session, keyspace, migrations_dir)
    assert [s.state for s in migrator.status()] == ["pending"] * len(load_migrations(migrations_dir))

    applied = migrator.migrate()

    assert applied == [m.name for m in load_migrations(migrations_dir)]
    assert {"predictions_by_day", "predictions_by_id", "feedback_by_id", "schema_migrations"} <= _tables(
        cassandra_session, keyspace
    )
    select_recorded = "SELECT * FROM " + qualified(keyspace, "schema_migrations")
    recorded = {r.name: r.checksum for r in cassandra_session.execute(select_recorded)}
    assert recorded == {m.name: m.checksum for m in load_migrations(migrations_dir)}
    replication = (
        cassandra_session.execute(
            "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s", (keyspace,)
        )
        .one()
        .replication
    )
    assert replication["class"].endswith("SimpleStrategy") and replication["replication_factor"] == "1"


def test_rerun_is_a_no_op_and_new_files_apply_in_order(cassandra_session, migrations_dir, keyspace):
    migrator = Migrator(cassandra_session, keyspace, migrations_dir)
    migrator.migrate()
    assert migrator.migrate() == []

    (migrations_dir / "v900_extra.cql").write_text(
        "-- a later change; a ';' in a comment\n"
        "CREATE TABLE IF NOT EXISTS extra (k int PRIMARY KEY, v text);\n"
        "INSERT INTO extra (k, v) VALUES (1, 'semi;colon ''quoted''');\n"
    )
    assert migrator.migrate() == ["v900_extra.cql"]
    select_extra = "SELECT v FROM " + qualified(keyspace, "extra") + " WHERE k = %s"
    assert cassandra_session.execute(select_extra, (1,)).one().v == "semi;colon 'quoted'"
    assert {s.state for s in migrator.status()} == {"applied"}


def test_an_edited_applied_file_is_refused(cassandra_session, migrations_dir, keyspace):
    migrator = Migrator(cassandra_session, keyspace, migrations_dir)
    migrator.migrate()
    first = sorted(migrations_dir.glob("v*.cql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    (migrations_dir / "v900_extra.cql").write_text("CREATE TABLE IF NOT EXISTS extra (k int PRIMARY KEY);")

    with pytest.raises(MigrationError, match=first.name):
        migrator.migrate()

    assert "extra" not in _tables(cassandra_session, keyspace)  # nothing applied after the refusal
    assert {s.name: s.state for s in migrator.status()}[first.name] == "changed"


def test_concurrent_runs_apply_each_file_once(cassandra_node, migrations_dir, keyspace):
    # Each runner has its own cluster connection, as separate replicas would.
    clusters = [
        build_cluster(
            [cassandra_node.host],
            cassandra_node.port,
            request_timeout=60,
            credentials=cassandra_node.credentials,
        )
        for _ in range(3)
    ]
    try:
        sessions = [c.connect() for c in clusters]
        with ThreadPoolExecutor(len(sessions)) as pool:
            results = list(pool.map(lambda s: Migrator(s, keyspace, migrations_dir).migrate(), sessions))
        applied = [name for result in results for name in result]
        assert sorted(applied) == sorted(m.name for m in load_migrations(migrations_dir))
        select_applied_by = "SELECT applied_by FROM " + qualified(keyspace, "schema_migrations")
        rows = list(sessions[0].execute(select_applied_by))
        assert len({r.applied_by for r in rows}) == 1  # one runner applied everything, the others waited
        select_lock = "SELECT * FROM " + qualified(keyspace, "schema_migrations_lock")
        assert sessions[0].execute(select_lock).one() is None
    finally:
        for c in clusters:
            c.shutdown()


def test_replication_settings_are_validated_and_rendered():
    assert Replication.parse("1").cql_map() == "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    assert Replication.parse("dc1:3, eu-west.2:2").cql_map() == (
        "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'eu-west.2': 2}"
    )
    for bad in ("", "0", "10", "dc1", "dc1:x", "dc1:3,dc1:2", "dc'1:3", "dc1:3}; DROP KEYSPACE x"):
        with pytest.raises(ReplicationError):
            Replication.parse(bad)


def test_the_bookkeeping_consistency_follows_the_replication():
    from cassandra import ConsistencyLevel

    single = Migrator(None, "ks", replication=Replication.parse("1"))
    assert (single.consistency, single.serial_consistency) == (ConsistencyLevel.ONE, ConsistencyLevel.SERIAL)
    three = Migrator(None, "ks", replication=Replication.parse("dc1:3"))
    assert (three.consistency, three.serial_consistency) == (
        ConsistencyLevel.LOCAL_QUORUM,
        ConsistencyLevel.LOCAL_SERIAL,
    )
    chosen = Migrator(None, "ks", replication=Replication.parse("3"), consistency="QUORUM")
    assert (chosen.consistency, chosen.serial_consistency) == (
        ConsistencyLevel.QUORUM,
        ConsistencyLevel.SERIAL,
    )
    with pytest.raises(ReplicationError):
        Migrator(None, "ks", replication=Replication.parse("1"), consistency="THREE")


def test_statement_splitter_respects_quotes_and_comments():
    text = "A 'x;y' ; -- c;\nB $$p;q$$; /* ; */ C 'it''s;' ;\n// end;"
    assert split_statements(text) == ["A 'x;y'", "B $$p;q$$", "C 'it''s;'"]


def _cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "gateway.store.migrate", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def _credentials_env(node, password: str | None = None) -> dict[str, str]:
    return {
        **os.environ,
        "CASSANDRA_USERNAME": node.credentials.username,
        "CASSANDRA_PASSWORD": node.credentials.password if password is None else password,
    }


def test_cli_migrate_then_status(cassandra_node, migrations_dir, keyspace):
    common = [
        "--hosts",
        cassandra_node.host,
        "--port",
        str(cassandra_node.port),
        "--keyspace",
        keyspace,
        "--migrations-dir",
        str(migrations_dir),
    ]
    first = _cli(*common, env=_credentials_env(cassandra_node))
    assert first.returncode == 0, first.stderr
    assert "applied" in first.stdout
    again = _cli("migrate", *common, env=_credentials_env(cassandra_node))
    assert again.returncode == 0 and "up to date" in again.stdout
    status = _cli("status", *common, env=_credentials_env(cassandra_node))
    assert status.returncode == 0
    assert status.stdout.count(" applied ") == len(load_migrations(migrations_dir))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--keyspace", "Bad-Name"], "invalid keyspace name"),
        (["--replication", "dc1:0"], "invalid replication factor"),
        (["--migrations-dir", "/nonexistent/dir"], "migrations directory not found"),
        (["--port", "1", "--wait", "1"], "cannot reach Cassandra"),
    ],
)
def test_cli_errors_are_one_clean_line(args, message):
    result = _cli(*args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("password", ["wrong", ""])
def test_cli_refuses_bad_credentials_at_once_with_a_clear_message(cassandra_node, keyspace, password):
    """Authentication is on: a wrong or missing password fails the run at once (no retrying for --wait), and
    says so, rather than 'cannot reach Cassandra'."""
    env = _credentials_env(cassandra_node, password)
    if not password:
        del env["CASSANDRA_USERNAME"], env["CASSANDRA_PASSWORD"]
    started = time.monotonic()
    args = ["--hosts", cassandra_node.host, "--port", str(cassandra_node.port), "--keyspace", keyspace]
    result = _cli(*args, "--wait", "60", env=env)
    assert result.returncode != 0
    assert "Cassandra refused the login" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 30  # not the 60 s of --wait

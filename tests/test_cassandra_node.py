"""The local node launcher: restart keeps data, clear errors for busy ports and missing prerequisites."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

from deploy.local import cassandra_node as launcher
from deploy.local.readiness import free_port, port_free
from gateway.store.cluster import Credentials, authentication_failure, build_cluster
from tests.fixtures.cassandra_node import qualified, wait_for_session


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deploy.local.cassandra_node", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_a_clean_stop_and_start_keeps_the_data(cassandra_node, cassandra_session, cassandra_keyspace):
    key = uuid.uuid1()
    insert = cassandra_session.prepare(
        "INSERT INTO " + qualified(cassandra_keyspace, "feedback_by_id") + " (id, label) VALUES (?, ?)"
    )
    cassandra_session.execute(insert, [key, 7])
    port = cassandra_node.port
    try:
        cassandra_node.stop()  # SIGTERM: drains memtables
        assert not cassandra_node.is_running()
    finally:
        cassandra_node.start()
        wait_for_session(cassandra_session)
    assert cassandra_node.port == port  # clients reconnect to the same address
    select = cassandra_session.prepare(
        "SELECT label FROM " + qualified(cassandra_keyspace, "feedback_by_id") + " WHERE id = ?"
    )
    assert cassandra_session.execute(select, [key], timeout=30).one().label == 7
    assert cassandra_node.startup_seconds is not None and cassandra_node.startup_seconds > 0


@pytest.mark.parametrize("credentials", [None, Credentials("cassandra", "wrong"), Credentials("nobody", "x")])
def test_the_node_refuses_clients_without_the_right_password(cassandra_node, credentials):
    from cassandra.cluster import NoHostAvailable

    cluster = build_cluster([cassandra_node.host], cassandra_node.port, credentials=credentials)
    try:
        with pytest.raises(NoHostAvailable) as refused:
            cluster.connect()
    finally:
        cluster.shutdown()
    reason = authentication_failure(refused.value)
    assert reason is not None, refused.value
    assert ("requires authentication" if credentials is None else "Bad credentials") in reason


def test_the_node_accepts_its_credentials(cassandra_node):
    cluster = build_cluster(
        [cassandra_node.host], cassandra_node.port, credentials=cassandra_node.credentials
    )
    try:
        row = cluster.connect().execute("SELECT role FROM system_auth.roles").all()
        assert cassandra_node.credentials.username in {r.role for r in row}
    finally:
        cluster.shutdown()


def test_cli_help():
    result = _cli("--help")
    assert result.returncode == 0
    assert "--port" in result.stdout and "--data-dir" in result.stdout


def test_cli_refuses_a_busy_port_at_once(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = _cli("--port", str(busy.getsockname()[1]), "--data-dir", str(tmp_path / "node"))
    assert result.returncode == 1
    assert "already in use" in result.stderr and "Traceback" not in result.stderr


def test_cli_cluster_refuses_a_port_busy_on_one_of_its_addresses(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.2", 0))  # node 2's address only: the whole cluster must refuse, naming it
        busy.listen()
        port = str(busy.getsockname()[1])
        result = _cli("--nodes", "2", "--port", port, "--data-dir", str(tmp_path / "cluster"))
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.2 is already in use" in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("cluster/node*/conf/node.json"))  # refused before any JVM started


@pytest.mark.parametrize(
    "args", [["--port", "70000"], ["--heap", "lots"], ["--nodes", "0"], ["--nodes", "10"], ["--nodes", "x"]]
)
def test_cli_rejects_bad_arguments(args):
    result = _cli(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_missing_maven_is_a_clear_message(tmp_path):
    # An empty cache and no `mvn` on PATH: the launcher says what to install instead of failing obscurely.
    result = _cli("--fetch-only", env={"XDG_CACHE_HOME": str(tmp_path), "PATH": "/nonexistent"})
    assert result.returncode == 1
    assert "Maven" in result.stderr and "apt-get install maven" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_java_17_is_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setattr(launcher, "JAVA17_CANDIDATES", ())
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("CASSANDRA_JAVA_HOME", "/usr/lib/jvm/temurin-25-jdk-amd64")  # present here, but not 17
    with pytest.raises(launcher.NodeError, match="needs Java 17"):
        launcher.find_java()


def test_the_cache_is_outside_the_repo_and_complete():
    lib = launcher.ensure_jars()
    assert (lib / ".complete").exists()
    assert any(p.name.startswith("cassandra-all-") for p in lib.glob("*.jar"))
    assert launcher.REPO_ROOT not in lib.parents


def test_cli_runs_in_the_foreground_and_stops_cleanly_on_sigterm(tmp_path):
    port = free_port()
    out = tmp_path / "out.txt"
    with open(out, "w") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "deploy.local.cassandra_node",
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path / "node"),
                "--heap",
                "512m",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 240
        while "ready on" not in out.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert f"ready on 127.0.0.1:{port}" in out.read_text(), out.read_text()
        cluster = build_cluster(["127.0.0.1"], port, credentials=launcher.CassandraNode.credentials)
        try:
            assert cluster.connect().execute("SELECT release_version FROM system.local").one()
        finally:
            cluster.shutdown()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
        assert "stopped" in out.read_text() and "Traceback" not in out.read_text()
        assert port_free("127.0.0.1", port)  # the JVM is gone too
    finally:
        if proc.poll() is None:
            proc.kill()

"""A three-node cluster on 127.0.0.1-3 (deploy/local/cassandra_cluster.py) under the real gateway: predictions
keep being answered and recorded while one node is killed, and while two are (then in the write-ahead log).

The cluster tests share one cluster (tests/fixtures/cassandra_cluster.py); the unit tests below it
need no Cassandra.
"""

from __future__ import annotations

import gzip
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests
from cassandra import ConsistencyLevel
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

from deploy.local.cassandra_cluster import CassandraCluster, initial_tokens, node_address
from deploy.local.cassandra_node import NodeError
from gateway.store.cluster import build_cluster
from tests.fixtures.cassandra_cluster import CLUSTER_REPLICATION
from tests.fixtures.cassandra_node import qualified
from tests.fixtures.gateway_server import GatewayProcess, gateway_environment
from tests.test_gateway_e2e import as_upload, metric, predict
from tests.waiting import eventually


@pytest.fixture(scope="module")
def uploads(mnist_dir: Path) -> list[bytes]:
    with gzip.open(mnist_dir / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    return [as_upload(image) for image in images[:10]]


class SteadyLoad:
    """One client sending predictions back to back through the gateway, keeping every answer."""

    def __init__(self, url: str, uploads: list[bytes]) -> None:
        self.url, self.uploads = url, uploads
        self.answered: list[str] = []  # ids of 200 answers, in order
        self.failures: list[str] = []  # anything else a user would have seen
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steady-load", daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                response = predict(self.url, self.uploads[n % len(self.uploads)])
                outcome = response.json()["id"] if response.status_code == 200 else None
                failure = None if outcome else f"{response.status_code}: {response.text[:200]}"
            except (requests.RequestException, ValueError, KeyError) as exc:
                outcome, failure = None, f"{type(exc).__name__}: {exc}"
            with self._lock:
                if outcome:
                    self.answered.append(outcome)
                else:
                    self.failures.append(failure)
            n += 1

    def __enter__(self) -> SteadyLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def ids(self) -> list[str]:
        with self._lock:
            return list(self.answered)

    def wait_for_more(self, count: int, what: str) -> list[str]:
        """Wait until `count` more predictions than now were answered; return every id answered so far."""
        target = len(self.ids()) + count
        eventually(lambda: len(self.ids()) >= target or self.failures, what=what, timeout_s=180)
        assert self.failures == []
        return self.ids()


def stored(session, keyspace: str, ids: list[str], level: int) -> set[str]:
    """The ids among `ids` that a read at `level` finds in predictions_by_id."""
    found: set[str] = set()
    select = session.prepare("SELECT id FROM " + qualified(keyspace, "predictions_by_id") + " WHERE id IN ?")
    for start in range(0, len(ids), 50):
        statement = select.bind([[uuid.UUID(i) for i in ids[start : start + 50]]])
        statement.consistency_level = level
        found.update(str(row.id) for row in session.execute(statement, timeout=20))
    return found


def hints_pending_for(cluster: CassandraCluster, address: str) -> list[str]:
    """The running nodes that still hold hints (writes it missed) for the node at `address`."""
    holding = []
    for node in cluster.nodes:
        if node.host == address or not node.is_running():
            continue
        driver = node.driver_cluster()
        try:
            rows = driver.connect().execute("SELECT address, files FROM system_views.pending_hints")
            if any(str(row.address) == address and row.files for row in rows):
                holding.append(node.host)
        finally:
            driver.shutdown()
    return holding


def spool_depth(gateway: GatewayProcess) -> float:
    return metric(requests.get(f"{gateway.url}/metrics", timeout=10).text, "gateway_spool_depth")


@pytest.mark.timeout(1500)  # the cluster's start (2-3.5 min here) plus two node restarts under load
def test_predictions_are_answered_and_recorded_through_one_then_two_nodes_down(
    cassandra_cluster, cluster_keyspace, model_server, uploads, tmp_path
):
    cluster = cassandra_cluster
    cluster.start()  # every node up (a no-op unless an earlier test left one down)
    env = gateway_environment(
        model_server,
        cluster.node(1),
        cluster_keyspace,
        tmp_path / "spool",
        CASSANDRA_HOSTS=cluster.contact_points,
        CASSANDRA_REPLICATION=CLUSTER_REPLICATION,  # consistency derived: LOCAL_QUORUM
    )
    gateway = GatewayProcess(env, tmp_path / "gateway.log").start()
    checker = build_cluster(cluster.hosts, cluster.port, request_timeout=20, credentials=cluster.credentials)
    session = checker.connect()
    try:
        eventually(lambda: requests.get(f"{gateway.url}/readyz").status_code == 200, what="gateway ready")
        with SteadyLoad(gateway.url, uploads) as load:
            load.wait_for_more(10, "predictions with three nodes up")

            # One node down: answered, and written to the two others at LOCAL_QUORUM.
            cluster.node(3).kill()
            before_restart = load.wait_for_more(30, "predictions with node 3 killed")
            eventually(
                lambda: (
                    stored(session, cluster_keyspace, before_restart, ConsistencyLevel.LOCAL_QUORUM)
                    == set(before_restart)
                ),
                what="every answered prediction at LOCAL_QUORUM with node 3 down",
                timeout_s=120,
            )

            # Back: the others hand it the writes it missed (hints), so it can answer for them alone.
            cluster.start_node(3)
            eventually(
                lambda: not hints_pending_for(cluster, node_address(3)),
                what="nodes 1 and 2 delivering their hints to node 3",
                timeout_s=180,
                interval_s=2,
            )
            # Logged in before: a login reads its role at LOCAL_QUORUM, which node 3 alone cannot give.
            alone = cluster.node(3).driver_cluster(timeout=10)
            try:
                node_3_only = alone.connect()
                cluster.node(1).kill()
                cluster.node(2).kill()
                # Until its failure detector convicts them, node 3 may send a read to 1 or 2 (a timeout).
                eventually(
                    lambda: (
                        stored(node_3_only, cluster_keyspace, before_restart, ConsistencyLevel.ONE)
                        == set(before_restart)
                    ),
                    what="node 3 alone answering for every prediction it missed while down",
                    timeout_s=90,
                    interval_s=1,
                )
            finally:
                alone.shutdown()

            # Two down: no quorum, still answered; the records wait in the gateway's log.
            load.wait_for_more(20, "predictions with nodes 1 and 2 killed")
            eventually(lambda: spool_depth(gateway) > 0, what="predictions waiting in the log")
            cluster.start_node(1)
            eventually(lambda: spool_depth(gateway) == 0, what="the log shipped", timeout_s=180)
            answered = load.wait_for_more(5, "predictions after node 1 is back")
        assert load.failures == []
        eventually(
            lambda: stored(session, cluster_keyspace, answered, ConsistencyLevel.QUORUM) == set(answered),
            what=f"all {len(answered)} answered predictions at QUORUM",
            timeout_s=120,
        )
    finally:
        gateway.stop()
        checker.shutdown()


# ----------------------------------------------------------------------------------- no Cassandra needed


def test_nodes_get_their_own_loopback_address_and_an_even_share_of_the_ring(tmp_path):
    cluster = CassandraCluster(tmp_path, 3, port=19042, storage_port=17000)
    assert [n.host for n in cluster.nodes] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    assert {n.port for n in cluster.nodes} == {19042} and {n.storage_port for n in cluster.nodes} == {17000}
    assert all(n.seeds == ("127.0.0.1",) for n in cluster.nodes)
    assert len({n.data_dir for n in cluster.nodes}) == 3
    tokens = initial_tokens(3)
    assert [n.initial_token for n in cluster.nodes] == tokens
    assert tokens[0] == -(2**63) and tokens[1] - tokens[0] == tokens[2] - tokens[1] == 2**64 // 3
    assert cluster.contact_points == "127.0.0.1,127.0.0.2,127.0.0.3"
    with pytest.raises(NodeError):
        cluster.node(4)


@pytest.mark.parametrize(("size", "ok"), [(0, False), (1, True), (9, True), (10, False)])
def test_cluster_size_limits(tmp_path, size, ok):
    if ok:
        assert len(CassandraCluster(tmp_path, size, port=19042, storage_port=17000).nodes) == size
    else:
        with pytest.raises(NodeError):
            CassandraCluster(tmp_path, size, port=19042, storage_port=17000)


def test_a_cluster_node_renders_its_address_seeds_token_and_hints(tmp_path):
    cluster = CassandraCluster(tmp_path, 3, port=19042, storage_port=17000)
    yaml = cluster.node(2)._render_yaml()
    assert "listen_address: 127.0.0.2\nrpc_address: 127.0.0.2\n" in yaml
    assert 'seeds: "127.0.0.1:17000"' in yaml
    assert f"initial_token: {initial_tokens(3)[1]}\n" in yaml
    assert "hinted_handoff_enabled: true" in yaml
    flags = cluster.node(2)._jvm_flags(tmp_path)
    assert "-Dcassandra.system_auth.default_rf=3" in flags
    single = CassandraCluster(tmp_path / "one", 1, port=19042, storage_port=17000).node(1)
    assert "hinted_handoff_enabled: false" in single._render_yaml()


def test_a_node_listens_on_loopback_only(tmp_path):
    from deploy.local.cassandra_node import CassandraNode

    for bad in ("10.0.0.1", "0.0.0.0", "localhost", "127.0.0.1; rm"):
        with pytest.raises(NodeError):
            CassandraNode(tmp_path, host=bad)


def test_the_driver_is_token_aware_dc_aware_with_every_contact_point():
    driver = build_cluster(
        ["127.0.0.1", "127.0.0.2", "127.0.0.3"], 9042, local_dc="dc1", consistency="LOCAL_QUORUM"
    )
    profile = driver.profile_manager.default
    assert driver.contact_points == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    assert isinstance(profile.load_balancing_policy, TokenAwarePolicy)
    child = profile.load_balancing_policy._child_policy
    assert isinstance(child, DCAwareRoundRobinPolicy) and child.local_dc == "dc1"
    assert profile.consistency_level == ConsistencyLevel.LOCAL_QUORUM
    assert profile.serial_consistency_level == ConsistencyLevel.LOCAL_SERIAL
    quorum = build_cluster(["127.0.0.1"], 9042, consistency="QUORUM").profile_manager.default
    assert (quorum.consistency_level, quorum.serial_consistency_level) == (
        ConsistencyLevel.QUORUM,
        ConsistencyLevel.SERIAL,
    )

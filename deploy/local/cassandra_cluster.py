"""A real N-node Cassandra cluster on one machine, without Docker: `mnist-cassandra --nodes 3`, tests, bench.

Node i (1-based) listens on 127.0.0.i (Linux routes all of 127.0.0.0/8 to loopback) with the same CQL and
storage ports as the others, keeps its state in `<root>/node<i>`, owns one evenly spread token and knows
node 1 as its seed. Each node is a `CassandraNode` (deploy/local/cassandra_node.py), so stopping, killing and
restarting one node is that node's own method: `cluster.node(2).kill()`, then `cluster.start_node(2)`.

Start order: the seed first, up to its gossip port; then the other nodes in parallel (each owns its token
and has no data to stream, so none bootstraps). Ready means every running node is Up and Normal in the ring
as every running node sees it: each one answers CQL, lists every node NORMAL in its gossip state, and reads
the login row at a consistency equal to the number of running nodes (the login is replicated to every node,
so that read fails while the node's failure detector still holds any running peer down).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from deploy.local.cassandra_node import CassandraNode, NodeError, PortInUse
from deploy.local.readiness import NotReady, free_port, port_free, tcp_open, wait_for

MAX_NODES = 9  # 127.0.0.1-127.0.0.9; replication factors go up to 9 (gateway/store/replication.py)


def node_address(number: int) -> str:
    return f"127.0.0.{number}"


def initial_tokens(size: int) -> list[int]:
    """Murmur3 tokens spread evenly over the ring, one per node."""
    return [-(2**63) + i * (2**64 // size) for i in range(size)]


def common_free_port(hosts: list[str], taken: tuple[int | None, ...] = ()) -> int:
    """A port free on every address (nodes share their port numbers, as they would on separate machines)."""
    for _ in range(100):
        port = free_port(hosts[0])
        if port not in taken and all(port_free(host, port) for host in hosts):
            return port
    raise NodeError(f"no port is free on all of {', '.join(hosts)}")


class CassandraCluster:
    credentials = CassandraNode.credentials

    def __init__(
        self,
        root: Path | str,
        size: int = 3,
        *,
        port: int | None = None,
        storage_port: int | None = None,
        heap: str = "512m",
        unsafe_system: bool = False,
        startup_timeout: float = 300.0,
    ) -> None:
        if not 1 <= size <= MAX_NODES:
            raise NodeError(f"a local cluster has 1 to {MAX_NODES} nodes, not {size}")
        self.root = Path(root).resolve()
        self.size = size
        self.hosts = [node_address(number) for number in range(1, size + 1)]
        saved = CassandraNode(self.root / "node1")._saved_ports()  # a restart keeps the cluster's ports
        self.port = port or saved.get("port") or common_free_port(self.hosts)
        self.storage_port = (
            storage_port or saved.get("storage_port") or common_free_port(self.hosts, (self.port,))
        )
        self.startup_timeout = startup_timeout
        self.startup_seconds: float | None = None
        self.nodes = [
            CassandraNode(
                self.root / f"node{number}",
                port=self.port,
                storage_port=self.storage_port,
                heap=heap,
                unsafe_system=unsafe_system,
                startup_timeout=startup_timeout,
                host=host,
                seeds=[self.hosts[0]],
                initial_token=token,
                cluster_size=size,
            )
            for number, (host, token) in enumerate(zip(self.hosts, initial_tokens(size), strict=True), 1)
        ]
        self._probes: dict[str, tuple] = {}  # host -> (driver cluster, session) used by the ring check

    def node(self, number: int) -> CassandraNode:
        """Node `number` (1-based: node 2 listens on 127.0.0.2)."""
        if not 1 <= number <= self.size:
            raise NodeError(f"no node {number} in a {self.size}-node cluster")
        return self.nodes[number - 1]

    @property
    def contact_points(self) -> str:
        """CASSANDRA_HOSTS for this cluster: every node."""
        return ",".join(self.hosts)

    # -- lifecycle
    def start(self) -> CassandraCluster:
        """Start every node that is not running (seed first) and wait until the ring is all Up/Normal."""
        started = time.monotonic()
        try:
            seed = self.nodes[0]
            launched = [node for node in self.nodes if not node.is_running()]
            for node in launched:  # all ports checked before any JVM starts
                for port in (self.port, self.storage_port):
                    if not port_free(node.host, port):
                        raise PortInUse(f"port {port} on {node.host} is already in use (another Cassandra?)")
            if seed in launched:
                seed.start(wait=False)
                wait_for(
                    lambda: tcp_open(seed.host, self.storage_port, 0.5),
                    what=f"the seed's gossip port {seed.host}:{self.storage_port}",
                    timeout_s=self.startup_timeout,
                    interval_s=0.2,
                    alive=lambda: _alive(seed),
                )
            for node in launched[1:] if seed in launched else launched:
                node.start(wait=False)
            for node in launched:
                node.wait_ready()
            self.wait_ring()
        except Exception:
            self.kill()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def start_node(self, number: int) -> CassandraNode:
        """(Re)start one node and wait until every running node sees it Up/Normal again."""
        node = self.node(number)
        node.start()
        self.wait_ring()
        return node

    def wait_ring(self, timeout: float | None = None) -> float:
        """Wait until every running node sees every running node Up and Normal; returns the seconds waited."""
        return wait_for(
            self._ring_ready,
            what="every running Cassandra node Up/Normal in the ring",
            timeout_s=timeout or self.startup_timeout,
            interval_s=0.5,
        )

    def stop(self) -> None:
        """Drain and stop every node (the data stays for the next start)."""
        self._close_probes()
        for node in reversed(self.nodes):
            node.stop()

    def kill(self) -> None:
        """SIGKILL every node: for throwaway clusters and failures."""
        self._close_probes()
        for node in self.nodes:
            node.kill()

    def __enter__(self) -> CassandraCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the ring check
    def _ring_ready(self) -> bool:
        from cassandra import ConsistencyLevel
        from cassandra.query import SimpleStatement

        running = [node for node in self.nodes if node.is_running()]
        if not running:
            raise NotReady("no node is running")
        levels = {1: ConsistencyLevel.ONE, 2: ConsistencyLevel.TWO, 3: ConsistencyLevel.THREE}
        level = ConsistencyLevel.ALL if len(running) == self.size else levels.get(len(running))
        login = SimpleStatement(
            "SELECT role FROM system_auth.roles WHERE role = %s",
            consistency_level=level or ConsistencyLevel.ONE,
        )
        for node in running:
            try:
                session = self._probe(node)
                gossip = session.execute("SELECT * FROM system_views.gossip_info")
                normal = {str(row.address) for row in gossip if _gossip_status(row).startswith("NORMAL")}
                missing = sorted(set(self.hosts) - normal)
                if missing:
                    raise NotReady(f"{node.host} does not see {', '.join(missing)} NORMAL yet")
                if session.execute(login, (self.credentials.username,)).one() is None:
                    raise NotReady(f"{node.host} has no login yet")
            except NotReady:
                raise
            except Exception as exc:  # not up yet, or a peer still down in this node's eyes
                self._close_probe(node.host)
                raise NotReady(f"{node.host}: {type(exc).__name__}: {str(exc)[:200]}") from None
        return True

    def _probe(self, node: CassandraNode):
        if node.host not in self._probes:
            cluster = node.driver_cluster()
            try:
                self._probes[node.host] = (cluster, cluster.connect())
            except Exception:
                cluster.shutdown()
                raise
        return self._probes[node.host][1]

    def _close_probe(self, host: str) -> None:
        probe = self._probes.pop(host, None)
        if probe is not None:
            probe[0].shutdown()

    def _close_probes(self) -> None:
        for host in list(self._probes):
            self._close_probe(host)


def run_in_foreground(args: argparse.Namespace, say: Callable[[str], None]) -> int:
    """`mnist-cassandra --nodes N`: start the cluster, report, and stay until a node dies or Ctrl-C/SIGTERM
    (which `main` turns into KeyboardInterrupt): then drain every node."""
    cluster = CassandraCluster(
        args.data_dir,
        args.nodes,
        port=args.port,
        storage_port=args.storage_port,
        heap=args.heap,
        unsafe_system=args.unsafe_system,
        startup_timeout=args.startup_timeout,
    )
    try:
        say(
            f"starting {args.nodes} nodes on {cluster.hosts[0]}-{cluster.hosts[-1]} port {cluster.port} "
            f"(data: {cluster.root}/node<i>) ..."
        )
        cluster.start()
        say(
            f"ready after {cluster.startup_seconds:.1f} s: every node Up/Normal; CASSANDRA_HOSTS="
            f"{cluster.contact_points} CASSANDRA_PORT={cluster.port}; Ctrl-C stops it"
        )
        while all(node.is_running() for node in cluster.nodes):
            time.sleep(0.5)
        dead = [node for node in cluster.nodes if not node.is_running()]
        say(f"error: Cassandra on {dead[0].host} exited unexpectedly; see {dead[0].log_path}")
        return 1
    except NodeError as exc:
        print(f"mnist-cassandra: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        say("stopping every node (draining to disk) ...")
        cluster.stop()
        say("stopped")
        return 0
    finally:
        cluster.stop()


def _gossip_status(row) -> str:
    """A peer's gossip STATUS ("NORMAL,<token>" once it owns its token); 4.0+ keeps it in status_with_port."""
    return getattr(row, "status_with_port", None) or getattr(row, "status", None) or ""


def _alive(node: CassandraNode) -> None:
    if not node.is_running():
        raise NodeError(f"Cassandra on {node.host} exited during startup (log: {node.log_path})")

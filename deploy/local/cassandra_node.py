"""A real single Cassandra node as a child process, without Docker: for `mnist-cassandra`, `make up`, tests.

The jars of `org.apache.cassandra:cassandra-all` and its runtime dependencies are fetched once with Maven into
`${XDG_CACHE_HOME:-~/.cache}/mnist-stack/cassandra/<version>/` (into a temporary sibling, renamed when
complete), so later starts need no network. Config templates (yaml, logback, JVM flags): `cassandra/node/`.
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deploy.local.readiness import free_port, port_free
from deploy.local.supervisor import DIE_WITH_PARENT

CASSANDRA_VERSION = "5.0.8"
REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_ROOT / "cassandra" / "node"
JAVA17_CANDIDATES = (
    "/usr/lib/jvm/java-17-openjdk-amd64",
    "/usr/lib/jvm/java-17-openjdk",
    "/usr/lib/jvm/temurin-17-jdk-amd64",
)
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies"

READY_LINE = "Startup complete"
BIND_FAILURES = ("Failed to bind port", "Address already in use")
STARTUP_FAILURE = "Exception encountered during startup"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)


class NodeError(RuntimeError):
    """The node cannot be obtained or started; the message says what to do."""


class PortInUse(NodeError):
    pass


# --------------------------------------------------------------------------------------- prerequisites


def find_java() -> Path:
    """A JDK 17 `java`: $CASSANDRA_JAVA_HOME, $JAVA_HOME, the usual Debian paths, then `java` on PATH."""
    homes = [os.environ.get("CASSANDRA_JAVA_HOME"), os.environ.get("JAVA_HOME"), *JAVA17_CANDIDATES]
    candidates = [Path(h) / "bin" / "java" for h in homes if h]
    on_path = shutil.which("java")
    if on_path:
        candidates.append(Path(on_path))
    for java in candidates:
        if java.is_file() and _java_major(java) == 17:
            return java
    raise NodeError(
        "Cassandra 5.0 needs Java 17 and none was found: install it (Debian/Ubuntu: "
        "`sudo apt-get install openjdk-17-jre-headless`) or point CASSANDRA_JAVA_HOME at a JDK 17"
    )


def _java_major(java: Path) -> int | None:
    try:
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r'version "(\d+)', out)
    return int(match.group(1)) if match else None


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mnist-stack" / "cassandra"


def ensure_jars(version: str = CASSANDRA_VERSION, *, quiet: bool = True) -> Path:
    """The directory of Cassandra's runtime jars, fetched with Maven on first use (needs network once)."""
    root = cache_root()
    lib = root / version / "lib"
    if (lib / ".complete").exists():
        return lib
    root.mkdir(parents=True, exist_ok=True)
    # One fetch at a time (parallel test sessions, `make up` beside the tests).
    with open(root / f".{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (lib / ".complete").exists():
            return lib
        _fetch_jars(version, lib, quiet=quiet)
    return lib


def _fetch_jars(version: str, lib: Path, *, quiet: bool) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise NodeError(
            f"Cassandra {version} is not cached yet and Maven is needed to fetch it once: install it "
            "(Debian/Ubuntu: `sudo apt-get install maven`)"
        )
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-fetch-", dir=lib.parent.parent))
    try:
        shutil.copy(CONF_DIR / "pom.xml", staging / "pom.xml")
        print(
            f"fetching Cassandra {version} from Maven Central into {lib.parent} (once) ...", file=sys.stderr
        )
        cmd = [
            mvn,
            "-B",
            "-f",
            str(staging / "pom.xml"),
            f"-Dcassandra.version={version}",
            DEPENDENCY_PLUGIN,
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging / 'lib'}",
        ]
        if quiet:
            cmd.insert(1, "-q")
        result = subprocess.run(cmd, capture_output=True, text=True)
        jars = list((staging / "lib").glob("*.jar"))
        if result.returncode != 0 or not any(j.name.startswith("cassandra-all-") for j in jars):
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise NodeError(f"Maven could not fetch Cassandra {version} (exit {result.returncode}):\n{tail}")
        (staging / "lib" / ".complete").write_text(f"{len(jars)} jars\n")
        lib.parent.mkdir(parents=True, exist_ok=True)
        if lib.exists():  # an earlier incomplete copy
            shutil.rmtree(lib)
        os.rename(staging / "lib", lib)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# -------------------------------------------------------------------------------------------- the node


class CassandraNode:
    """One Cassandra node on a loopback address (`host`, default 127.0.0.1) whose state lives in `data_dir`
    (restart keeps the data).

    Ports left as None are picked free at the first start and kept for restarts, so clients can reconnect.
    `unsafe_system=True` skips fsync of system tables: quicker, for throwaway test nodes only.
    Clients log in (PasswordAuthenticator) with `credentials`: the default superuser a new node creates at
    start-up, enough for a node that listens on 127.0.0.1 only.
    A node of a cluster (deploy/local/cassandra_cluster.py) also gets the `seeds` (addresses; the same storage
    port on each), its `initial_token` and the `cluster_size`: system keyspaces (logins included) are then
    replicated to every node and hinted handoff is on.
    """

    credentials = Credentials("cassandra", "cassandra")

    def __init__(
        self,
        data_dir: Path | str,
        *,
        port: int | None = None,
        storage_port: int | None = None,
        heap: str = "1g",
        unsafe_system: bool = False,
        version: str = CASSANDRA_VERSION,
        startup_timeout: float = 180.0,
        host: str = "127.0.0.1",
        seeds: Sequence[str] = (),
        initial_token: int = 0,
        cluster_size: int = 1,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = loopback(host)
        self.seeds = tuple(loopback(seed) for seed in seeds) or (self.host,)
        self.initial_token = int(initial_token)
        self.cluster_size = int(cluster_size)
        self._auto_native = port is None
        self._auto_storage = storage_port is None
        saved = self._saved_ports()  # a restart on the same data dir keeps its ports when it can
        self.port = port or saved.get("port")
        self.storage_port = storage_port or saved.get("storage_port")
        self.heap = heap
        self.unsafe_system = unsafe_system
        self.version = version
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self._log_offset = 0
        self._started_at = 0.0

    # -- paths
    @property
    def log_path(self) -> Path:
        return self.data_dir / "logs" / "stdout.log"

    @property
    def contact_point(self) -> str:
        return f"{self.host}:{self.port}"

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- lifecycle
    def start(self, *, wait: bool = True) -> CassandraNode:
        """Launch the node (and by default wait until it answers CQL). Retries on a port taken meanwhile."""
        if self.is_running():
            return self
        java = find_java()
        lib = ensure_jars(self.version)
        attempts = 3 if self._auto_native or self._auto_storage else 1
        for attempt in range(1, attempts + 1):
            self._choose_ports(fresh=attempt > 1)
            self._launch(java, lib)
            if not wait:
                return self
            try:
                return self.wait_ready()
            except PortInUse:
                if attempt == attempts:
                    raise
                log.info("a port was taken meanwhile; retrying with fresh ports")
        return self

    def wait_ready(self, timeout: float | None = None) -> CassandraNode:
        """Wait for `Startup complete` in the log and an answer from system.local; fail fast otherwise."""
        if self.process is None:
            raise NodeError("the node was not started")
        deadline = self._started_at + (timeout or self.startup_timeout)
        seen_ready = False
        while True:
            text = self._new_log_text()
            if any(marker in text for marker in BIND_FAILURES):
                self.kill()
                raise PortInUse(
                    f"Cassandra could not bind its ports ({self._ports_text()}): {self._log_hint()}"
                )
            if STARTUP_FAILURE in text:
                self.kill()
                raise NodeError(f"Cassandra failed during startup: {self._log_hint()}")
            if self.process.poll() is not None:
                raise NodeError(
                    f"Cassandra exited with status {self.process.returncode} during startup: "
                    f"{self._log_hint()}"
                )
            seen_ready = seen_ready or READY_LINE in text
            if seen_ready and self._query_system_local():
                self.startup_seconds = time.monotonic() - self._started_at
                return self
            if time.monotonic() > deadline:
                self.kill()
                raise NodeError(
                    f"Cassandra did not become ready within {timeout or self.startup_timeout:.0f} s: "
                    f"{self._log_hint()}"
                )
            time.sleep(0.2)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM: Cassandra drains (flushes memtables) and exits; SIGKILL after `timeout` seconds."""
        if not self.is_running():
            self.process = None
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("Cassandra did not stop within %.0f s; killing it", timeout)
            self.kill()
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash would: unflushed data is recovered from the commit log on the next start."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> CassandraNode:
        self.stop()
        return self.start()

    def __enter__(self) -> CassandraNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals
    def _choose_ports(self, *, fresh: bool) -> None:
        for attr, auto in (("port", self._auto_native), ("storage_port", self._auto_storage)):
            current = getattr(self, attr)
            if current is not None and not fresh and port_free(self.host, current):
                continue
            if not auto:
                raise PortInUse(
                    f"port {current} on {self.host} is already in use (another Cassandra?); "
                    "choose another port"
                )
            setattr(self, attr, free_port(self.host))
        while self.storage_port == self.port:
            self.storage_port = free_port(self.host)

    def _saved_ports(self) -> dict:
        try:
            saved = json.loads((self.data_dir / "conf" / "node.json").read_text())
            return {k: int(saved[k]) for k in ("port", "storage_port") if k in saved}
        except (OSError, ValueError, TypeError):
            return {}

    def _launch(self, java: Path, lib: Path) -> None:
        for sub in ("data", "commitlog", "saved_caches", "hints", "cdc_raw", "logs", "conf"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        yaml_path = self.data_dir / "conf" / "cassandra.yaml"
        yaml_path.write_text(self._render_yaml())
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        cmd = [
            str(java),
            *self._jvm_flags(lib),
            "-cp",
            f"{lib}/*",
            "org.apache.cassandra.service.CassandraDaemon",
        ]
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,  # Ctrl-C in a terminal goes to us; we stop the node in order
                preexec_fn=DIE_WITH_PARENT,  # a crashed test run or launcher leaves no JVM behind
            )
        self._started_at = time.monotonic()
        (self.data_dir / "conf" / "node.json").write_text(
            json.dumps(
                {
                    "pid": self.process.pid,
                    "port": self.port,
                    "storage_port": self.storage_port,
                    "version": self.version,
                }
            )
        )

    def _render_yaml(self) -> str:
        quoted = {
            name: json.dumps(str(self.data_dir / name))
            for name in ("data", "commitlog", "saved_caches", "hints", "cdc_raw")
        }
        template = string.Template((CONF_DIR / "cassandra.yaml.template").read_text())
        return template.substitute(
            address=self.host,
            seeds=",".join(f"{seed}:{int(self.storage_port)}" for seed in self.seeds),
            initial_token=self.initial_token,
            hinted_handoff="true" if self.cluster_size > 1 else "false",
            native_port=int(self.port),
            storage_port=int(self.storage_port),
            data_dir=quoted["data"],
            commitlog_dir=quoted["commitlog"],
            saved_caches_dir=quoted["saved_caches"],
            hints_dir=quoted["hints"],
            cdc_raw_dir=quoted["cdc_raw"],
        )

    def _jvm_flags(self, lib: Path) -> list[str]:
        lines = (CONF_DIR / "jvm17.options").read_text().splitlines()
        flags = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        jamm = sorted(lib.glob("jamm-*.jar"))
        if jamm:
            flags.append(f"-javaagent:{jamm[-1]}")
        flags += [
            "-Xms256m",
            f"-Xmx{self.heap}",  # a small initial heap: mlockall at start touches all of it
            f"-Dcassandra.config={(self.data_dir / 'conf' / 'cassandra.yaml').as_uri()}",
            f"-Dcassandra.storagedir={self.data_dir}",
            f"-Dcassandra.logdir={self.data_dir / 'logs'}",
            f"-Dlogback.configurationFile={CONF_DIR / 'logback.xml'}",
            f"-Dcassandra.initial_token={self.initial_token}",
        ]
        if self.cluster_size > 1:
            # Logins and repair bookkeeping survive a node going down only when every node holds them; the
            # default login is created once a quorum is up, retried every half second until then.
            flags += [
                f"-Dcassandra.system_auth.default_rf={self.cluster_size}",
                f"-Dcassandra.system_distributed.default_rf={self.cluster_size}",
                "-Dcassandra.superuser_setup_delay_ms=500",
            ]
        if self.unsafe_system:
            flags.append("-Dcassandra.unsafesystem=true")
        return flags

    def _new_log_text(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def _log_hint(self) -> str:
        lines = [
            ln
            for ln in self._new_log_text().splitlines()
            if ln.startswith(("ERROR", "Caused by", "Exception"))
            or any(m in ln for m in (*BIND_FAILURES, STARTUP_FAILURE))
        ]
        detail = lines[0].strip() if lines else "no error in the log"
        return f"{detail[:300]} (full log: {self.log_path})"

    def _ports_text(self) -> str:
        return f"native {self.port}, storage {self.storage_port}"

    def driver_cluster(self, timeout: float = 2.0):
        """A driver `Cluster` that talks to this node only (not the peers it announces); not connected."""
        from cassandra.auth import PlainTextAuthProvider
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
        from cassandra.policies import WhiteListRoundRobinPolicy

        quiet_driver_logs()
        only_this_node = ExecutionProfile(
            load_balancing_policy=WhiteListRoundRobinPolicy([self.host]), request_timeout=10
        )
        return Cluster(
            [self.host],
            port=self.port,
            connect_timeout=timeout,
            control_connection_timeout=timeout,
            protocol_version=5,
            execution_profiles={EXEC_PROFILE_DEFAULT: only_this_node},
            auth_provider=PlainTextAuthProvider(self.credentials.username, self.credentials.password),
        )

    def _query_system_local(self) -> bool:
        cluster = self.driver_cluster()
        try:
            session = cluster.connect()
            return session.execute("SELECT release_version FROM system.local", timeout=5).one() is not None
        except Exception:  # not up yet: the caller polls until its deadline
            return False
        finally:
            cluster.shutdown()


def loopback(address: str) -> str:
    """`address` when it is an IPv4 loopback address (127.0.0.0/8: local nodes never listen elsewhere)."""
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        ip = None
    if ip is None or not ip.is_loopback:
        raise NodeError(f"a local node listens on a 127.x.y.z address, not {address!r}")
    return str(ip)


def quiet_driver_logs() -> None:
    """The driver warns on each failed connection; polling a starting node expects many."""
    for name in (
        "cassandra.cluster",
        "cassandra.connection",
        "cassandra.pool",
        "cassandra.io",
        "cassandra.policies",
    ):
        logging.getLogger(name).setLevel(logging.CRITICAL)


# ------------------------------------------------------------------------------------- mnist-cassandra


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mnist-cassandra",
        description="Run a local Cassandra node in the foreground on 127.0.0.1, or with --nodes N a cluster "
        "on 127.0.0.1..N (Ctrl-C or SIGTERM stops it cleanly). The first run fetches Cassandra with Maven "
        "into ~/.cache/mnist-stack/cassandra.",
    )
    parser.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="nodes of a local cluster: node i on 127.0.0.i with the same ports, its data in "
        "<data-dir>/node<i>, node 1 the seed; ready when every node is Up/Normal (default: 1, a single node)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("CASSANDRA_PORT") or 9042),
        help="CQL port (default: $CASSANDRA_PORT or 9042)",
    )
    parser.add_argument(
        "--storage-port",
        type=int,
        default=None,
        help="inter-node port (default: the one used last time in --data-dir, else a free one)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("CASSANDRA_DATA_DIR") or ".state/cassandra"),
        help="where data, commit log and logs live; reused across restarts "
        "(default: $CASSANDRA_DATA_DIR or .state/cassandra)",
    )
    parser.add_argument(
        "--heap",
        default=None,
        help="maximum JVM heap of each node, e.g. 512m or 2g (default: 1g for one node, 512m in a cluster)",
    )
    parser.add_argument(
        "--unsafe-system",
        action="store_true",
        help="skip fsync of system tables: starts faster; for throwaway test nodes only",
    )
    parser.add_argument("--startup-timeout", type=float, default=180.0, metavar="SECONDS")
    parser.add_argument("--fetch-only", action="store_true", help="fetch Cassandra into the cache and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.heap = args.heap or ("1g" if args.nodes == 1 else "512m")
    if not 1 <= args.nodes <= 9:
        build_parser().error(f"--nodes: 1 to 9 nodes (127.0.0.1-127.0.0.9), got {args.nodes}")
    if not re.fullmatch(r"\d+[mg]", args.heap):
        build_parser().error(f"--heap: expected a size like 512m or 2g, got {args.heap!r}")
    for flag, port in (("--port", args.port), ("--storage-port", args.storage_port)):
        if port is not None and not 1 <= port <= 65535:
            build_parser().error(f"{flag}: {port} is not a port number")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    quiet_driver_logs()
    say = lambda msg: print(f"mnist-cassandra: {msg}", flush=True)  # noqa: E731

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    node = None
    try:
        find_java()
        lib = ensure_jars(CASSANDRA_VERSION, quiet=False)
        if args.fetch_only:
            say(f"Cassandra {CASSANDRA_VERSION} is in {lib}")
            return 0
        if args.nodes > 1:
            from deploy.local.cassandra_cluster import run_in_foreground

            return run_in_foreground(args, say)
        node = CassandraNode(
            args.data_dir,
            port=args.port,
            storage_port=args.storage_port,
            heap=args.heap,
            unsafe_system=args.unsafe_system,
            startup_timeout=args.startup_timeout,
        )
        say(f"starting Cassandra {CASSANDRA_VERSION} on {node.host}:{args.port} (data: {node.data_dir}) ...")
        node.start()
        say(
            f"ready on {node.contact_point} after {node.startup_seconds:.1f} s; log: {node.log_path}; "
            "Ctrl-C stops it"
        )
        while node.is_running():
            time.sleep(0.5)
        say(f"error: Cassandra exited unexpectedly (status {node.process.returncode}); see {node.log_path}")
        return 1
    except NodeError as exc:
        print(f"mnist-cassandra: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if node is not None and node.is_running():
            say("stopping (draining to disk) ...")
            node.stop()
            say("stopped")
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if node is not None and node.is_running():
            node.stop()


if __name__ == "__main__":
    sys.exit(main())

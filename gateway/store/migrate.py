"""`mnist-migrate`: apply the ordered CQL files of `cassandra/migrations/` to the prediction keyspace.

- Files are named `vNNN_description.cql` and applied in version order, each statement in turn. Statements
  must be idempotent (`IF NOT EXISTS`), so a file interrupted half-way can simply run again.
- Each applied file is recorded in `<keyspace>.schema_migrations` with its SHA-256; a run refuses to start
  when an applied file has changed since (write a new file instead).
- Several replicas may run it at once: a lightweight-transaction lock row (with a TTL, so a crashed holder's
  lock expires) lets one apply while the others wait, then find nothing left to do.
- The keyspace itself is created from settings, not from a file: its name must match `[a-z][a-z0-9_]*` and
  the replication is parsed into a strategy plus integer factors, then rendered by `Replication.cql_map()`.
  No text from the environment reaches CQL unchecked.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cassandra import ConsistencyLevel, DriverException
from cassandra.cluster import NoHostAvailable, Session
from cassandra.query import PreparedStatement, SimpleStatement

from gateway.replication import Replication, consistency_for, serial_consistency_for
from gateway.settings import is_keyspace
from gateway.store.cluster import (
    Credentials,
    authentication_failure,
    build_cluster,
    parse_hosts,
    quiet_driver_logs,
)

DEFAULT_MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "cassandra" / "migrations"
MIGRATION_FILE_RE = re.compile(r"v(\d{3,})_([a-z0-9_]+)\.cql")
LOCK_NAME = "migrate"

log = logging.getLogger(__name__)


class MigrationError(Exception):
    """A migration run cannot proceed; the message says why and what to do."""


# ------------------------------------------------------------------------------------- settings -> CQL


def validate_keyspace(name: str) -> str:
    if not is_keyspace(name or ""):
        raise MigrationError(f"invalid keyspace name {name!r}: use lower-case letters, digits and _ (max 48)")
    return name


# ------------------------------------------------------------------------------------- migration files


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    checksum: str
    statements: tuple[str, ...]


def load_migrations(directory: Path | str) -> list[Migration]:
    directory = Path(directory)
    if not directory.is_dir():
        raise MigrationError(f"migrations directory not found: {directory}")
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.cql")):
        match = MIGRATION_FILE_RE.fullmatch(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named vNNN_description.cql")
        version = int(match.group(1))
        if version in migrations:
            raise MigrationError(f"{path.name}: version {version} is also {migrations[version].name}")
        data = path.read_bytes()
        statements = tuple(split_statements(data.decode("utf-8")))
        if not statements:
            raise MigrationError(f"{path.name}: no CQL statement in the file")
        migrations[version] = Migration(version, path.name, hashlib.sha256(data).hexdigest(), statements)
    return [migrations[v] for v in sorted(migrations)]


def split_statements(text: str) -> list[str]:
    """Split CQL on `;`, ignoring those inside quotes, `$$` strings and comments; comments are dropped."""
    statements, current, i, n = [], [], 0, len(text)
    while i < n:
        two = text[i : i + 2]
        if two in ("--", "//"):
            i = text.find("\n", i)
            i = n if i < 0 else i
            continue
        if two == "/*":
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        if text[i] in "'\"" or two == "$$":
            quote = "$$" if two == "$$" else text[i]
            end = text.find(quote, i + len(quote))
            while quote == "'" and end >= 0 and text[end + 1 : end + 2] == "'":  # '' escapes a quote
                end = text.find(quote, end + 2)
            end = n if end < 0 else end + len(quote)
            current.append(text[i:end])
            i = end
            continue
        if text[i] == ";":
            statements.append("".join(current).strip())
            current = []
        else:
            current.append(text[i])
        i += 1
    statements.append("".join(current).strip())
    return [s for s in statements if s]


# ------------------------------------------------------------------------------------------ the runner


@dataclass(frozen=True)
class FileStatus:
    name: str
    state: str  # applied | pending | changed | missing (applied, but no longer in the directory)
    applied_at: object = None


class Migrator:
    def __init__(
        self,
        session: Session,
        keyspace: str,
        migrations_dir: Path | str = DEFAULT_MIGRATIONS_DIR,
        *,
        replication: Replication | None = None,
        consistency: str = "",
        lock_ttl: int = 300,
        lock_wait: float = 330.0,
        say: Callable[[str], None] = lambda msg: log.info("%s", msg),
    ) -> None:
        self.session = session
        self.keyspace = validate_keyspace(keyspace)
        self.migrations_dir = Path(migrations_dir)
        self.replication = replication or Replication.parse("1")
        level = consistency_for(self.replication, consistency)
        self.consistency = ConsistencyLevel.name_to_value[level]
        self.serial_consistency = ConsistencyLevel.name_to_value[serial_consistency_for(level)]
        self.lock_ttl = lock_ttl
        self.lock_wait = lock_wait
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.say = say
        self._prepared: dict[str, PreparedStatement] = {}

    def migrate(self) -> list[str]:
        """Apply pending files in order; return their names (empty when up to date)."""
        migrations = load_migrations(self.migrations_dir)
        self._ensure_keyspace()
        self._check_unchanged(migrations, self._applied())  # refuse early, before waiting for a lock
        self._acquire_lock()
        try:
            applied = self._applied()  # again: another runner may have finished while we waited
            self._check_unchanged(migrations, applied)
            done = []
            for migration in migrations:
                if migration.name not in applied:
                    self._apply(migration)
                    done.append(migration.name)
            return done
        finally:
            self._release_lock()

    def status(self) -> list[FileStatus]:
        migrations = load_migrations(self.migrations_dir)
        if not self._keyspace_exists():
            return [FileStatus(m.name, "pending") for m in migrations]
        self._ensure_bookkeeping()
        applied = self._applied()
        rows = []
        for m in migrations:
            row = applied.get(m.name)
            state = "pending" if row is None else ("applied" if row.checksum == m.checksum else "changed")
            rows.append(FileStatus(m.name, state, row.applied_at if row else None))
        known = {m.name for m in migrations}
        rows += [
            FileStatus(name, "missing", row.applied_at) for name, row in applied.items() if name not in known
        ]
        return rows

    # -- internals
    def _execute(self, cql: str, params: tuple | None = None, *, serial: bool = False, timeout: float = 30.0):
        """DDL runs as is (its only variable is the validated keyspace); anything with values is prepared."""
        if params is None:
            statement = SimpleStatement(cql)
        else:
            if cql not in self._prepared:
                self._prepared[cql] = self.session.prepare(cql)
            statement = self._prepared[cql].bind(params)
        statement.consistency_level = self.consistency
        if serial:
            statement.serial_consistency_level = self.serial_consistency
        return self.session.execute(statement, timeout=timeout)

    def _keyspace_exists(self) -> bool:
        rows = self._execute(
            "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = ?", (self.keyspace,)
        )
        return rows.one() is not None

    def _ensure_keyspace(self) -> None:
        if not self._keyspace_exists():
            self.say(f"creating keyspace {self.keyspace} ({self.replication.describe()})")
            self._execute(
                f'CREATE KEYSPACE IF NOT EXISTS "{self.keyspace}" '
                f"WITH replication = {self.replication.cql_map()}",
                timeout=60,
            )
        self._ensure_bookkeeping()

    def _ensure_bookkeeping(self) -> None:
        ks = self.keyspace
        self._execute(
            f'CREATE TABLE IF NOT EXISTS "{ks}".schema_migrations (name text PRIMARY KEY, '
            "version int, checksum text, applied_at timestamp, applied_by text, duration_ms int)",
            timeout=60,
        )
        self._execute(
            f'CREATE TABLE IF NOT EXISTS "{ks}".schema_migrations_lock (name text PRIMARY KEY, '
            "owner text, acquired_at timestamp)",
            timeout=60,
        )

    def _applied(self) -> dict:
        rows = self._execute(f'SELECT name, checksum, applied_at FROM "{self.keyspace}".schema_migrations')
        return {row.name: row for row in rows}

    def _check_unchanged(self, migrations: list[Migration], applied: dict) -> None:
        changed = [m.name for m in migrations if m.name in applied and applied[m.name].checksum != m.checksum]
        if changed:
            raise MigrationError(
                f"applied migration file(s) changed since they ran: {', '.join(changed)}; restore them "
                "and put schema changes in a new vNNN_*.cql file"
            )

    def _acquire_lock(self) -> None:
        deadline = time.monotonic() + self.lock_wait
        waiting_said = False
        while True:
            result = self._execute(
                f'INSERT INTO "{self.keyspace}".schema_migrations_lock (name, owner, acquired_at) '
                "VALUES (?, ?, toTimestamp(now())) IF NOT EXISTS USING TTL ?",
                (LOCK_NAME, self.owner, self.lock_ttl),
                serial=True,
            )
            row = result.one()
            if result.was_applied:
                return
            if time.monotonic() > deadline:
                raise MigrationError(
                    f"another migration run ({row.owner}, since {row.acquired_at}) still holds "
                    f"the lock after {self.lock_wait:.0f} s; it expires {self.lock_ttl} s after "
                    "it was taken"
                )
            if not waiting_said:
                self.say(f"waiting for the migration lock held by {row.owner}")
                waiting_said = True
            time.sleep(0.5)

    def _release_lock(self) -> None:
        try:
            self._execute(
                f'DELETE FROM "{self.keyspace}".schema_migrations_lock WHERE name = ? IF owner = ?',
                (LOCK_NAME, self.owner),
                serial=True,
            )
        except DriverException as exc:  # the TTL frees it anyway
            log.warning("could not release the migration lock (it expires by itself): %s", exc)

    def _apply(self, migration: Migration) -> None:
        self.say(f"applying {migration.name} ({len(migration.statements)} statement(s))")
        started = time.monotonic()
        for number, cql in enumerate(migration.statements, 1):
            try:
                # The keyspace travels with each query (protocol v5): the session keeps its own.
                self.session.execute(SimpleStatement(cql, keyspace=self.keyspace), timeout=120)
            except DriverException as exc:
                raise MigrationError(f"{migration.name}: statement {number} failed: {exc}") from exc
        if not self.session.cluster.control_connection.wait_for_schema_agreement():
            raise MigrationError(f"{migration.name}: the nodes did not agree on the schema; run again")
        self._execute(
            f'INSERT INTO "{self.keyspace}".schema_migrations '
            "(name, version, checksum, applied_at, applied_by, duration_ms) "
            "VALUES (?, ?, ?, toTimestamp(now()), ?, ?)",
            (
                migration.name,
                migration.version,
                migration.checksum,
                self.owner,
                int((time.monotonic() - started) * 1000),
            ),
        )


# ------------------------------------------------------------------------------------ connecting + CLI


def connect(
    hosts: str,
    port: int,
    *,
    credentials: Credentials | None = None,
    wait: float = 60.0,
    say: Callable[[str], None] = print,
) -> Session:
    """A session, retrying with backoff for up to `wait` seconds (Cassandra may still be starting); a refused
    login fails at once (waiting does not fix a password)."""
    deadline = time.monotonic() + wait
    delay, attempt = 0.5, 0
    while True:
        attempt += 1
        cluster = build_cluster(hosts, port, request_timeout=30.0, credentials=credentials)
        try:
            return cluster.connect()
        except (NoHostAvailable, DriverException, OSError) as exc:
            cluster.shutdown()
            refused = authentication_failure(exc)
            if refused is not None:
                who = f"user {credentials.username!r}" if credentials else "no CASSANDRA_USERNAME"
                raise MigrationError(
                    f"Cassandra refused the login at {hosts} port {port} ({who}): {refused}"
                ) from None
            if time.monotonic() + delay > deadline:
                raise MigrationError(
                    f"cannot reach Cassandra at {hosts} port {port} after {attempt} attempt(s): {_short(exc)}"
                ) from exc
            if attempt == 1:
                say(f"waiting for Cassandra at {hosts} port {port} ...")
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _short(exc: BaseException) -> str:
    if isinstance(exc, NoHostAvailable) and exc.errors:
        exc = next(iter(exc.errors.values()))
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="mnist-migrate",
        description="Apply the CQL migrations in order (default), or show their status.",
        epilog="Environment: CASSANDRA_HOSTS, CASSANDRA_PORT, CASSANDRA_KEYSPACE, CASSANDRA_REPLICATION "
        "(`1` = SimpleStrategy RF 1, or `dc1:3,dc2:3` = NetworkTopologyStrategy), CASSANDRA_CONSISTENCY "
        "(empty: LOCAL_QUORUM when every DC keeps 3+ replicas, else ONE), CASSANDRA_MIGRATIONS_DIR, "
        "CASSANDRA_USERNAME and CASSANDRA_PASSWORD (the login; both or neither).",
    )
    parser.add_argument("command", nargs="?", choices=("migrate", "status"), default="migrate")
    parser.add_argument(
        "--hosts", default=env("CASSANDRA_HOSTS", "127.0.0.1"), help="comma-separated contact points"
    )
    parser.add_argument("--port", type=int, default=_env_int("CASSANDRA_PORT", 9042))
    parser.add_argument("--keyspace", default=env("CASSANDRA_KEYSPACE", "mnist"))
    parser.add_argument(
        "--replication",
        default=env("CASSANDRA_REPLICATION", "1"),
        help="replication of a new keyspace: `1` or `dc1:3,dc2:3` (default: %(default)s)",
    )
    parser.add_argument(
        "--consistency",
        default=env("CASSANDRA_CONSISTENCY", ""),
        help="consistency of the bookkeeping reads and writes (default: derived from --replication)",
    )
    parser.add_argument(
        "--migrations-dir", type=Path, default=Path(env("CASSANDRA_MIGRATIONS_DIR") or DEFAULT_MIGRATIONS_DIR)
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for Cassandra to answer (default: %(default)s)",
    )
    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=330.0,
        metavar="SECONDS",
        help="how long to wait for a concurrent run to finish (default: %(default)s)",
    )
    return parser


def _credentials_from_env() -> Credentials | None:
    """The password is read from the environment only (a flag would show it in `ps`)."""
    username = os.environ.get("CASSANDRA_USERNAME", "")
    password = os.environ.get("CASSANDRA_PASSWORD", "")
    if bool(username) != bool(password):
        raise MigrationError("set both CASSANDRA_USERNAME and CASSANDRA_PASSWORD, or neither")
    return Credentials(username, password) if username else None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    if not value.isdigit():
        sys.exit(f"mnist-migrate: error: {name} must be a port number, got {value!r}")
    return int(value)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_driver_logs(logging.CRITICAL)
    say = lambda msg: print(msg, flush=True)  # noqa: E731
    try:
        parse_hosts(args.hosts)
        replication = Replication.parse(args.replication)
        consistency_for(replication, args.consistency)
        validate_keyspace(args.keyspace)
        load_migrations(args.migrations_dir)  # bad files are reported before touching the network
        session = connect(args.hosts, args.port, credentials=_credentials_from_env(), wait=args.wait, say=say)
        try:
            migrator = Migrator(
                session,
                args.keyspace,
                args.migrations_dir,
                replication=replication,
                consistency=args.consistency,
                lock_wait=args.lock_timeout,
                say=say,
            )
            if args.command == "status":
                rows = migrator.status()
                say(f"keyspace {args.keyspace} at {args.hosts}:{args.port}, files in {args.migrations_dir}")
                for row in rows:
                    when = f"  {row.applied_at:%Y-%m-%d %H:%M:%S}Z" if row.applied_at else ""
                    say(f"  {row.name:<40} {row.state}{when}")
                return 1 if any(r.state == "changed" for r in rows) else 0
            done = migrator.migrate()
            say(
                f"applied {len(done)} migration(s): {', '.join(done)}"
                if done
                else f"keyspace {args.keyspace} is up to date"
            )
            return 0
        finally:
            session.cluster.shutdown()
    except (MigrationError, ValueError) as exc:
        print(f"mnist-migrate: error: {exc}", file=sys.stderr)
        return 1
    except (DriverException, NoHostAvailable) as exc:
        print(f"mnist-migrate: error: Cassandra failed: {_short(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mnist-migrate: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

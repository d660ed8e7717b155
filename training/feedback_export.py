"""`mnist-train dataset export`: labelled predictions from Cassandra (`feedback_by_id`) into a snapshot.

One prepared full-table read, paged (`--page-size` rows per request, the driver's paging state between pages),
filtered to the query window on `updated_at` (when the label was given). After every page the rows are made
durable and the paging state recorded (training/snapshot.py `Spool`), so an interrupted export run again with
the same window continues where it stopped. Memory: one page plus ~150 bytes per distinct image.

Cassandra is reached with the gateway's settings (CASSANDRA_HOSTS, CASSANDRA_PORT, CASSANDRA_KEYSPACE,
CASSANDRA_LOCAL_DC, CASSANDRA_USERNAME, CASSANDRA_PASSWORD). The trainer image holds the `training` package
only, so they are read here; the keyspace rule is the gateway's (tests/test_one_rule.py pins the copy).
"""

from __future__ import annotations

import datetime as dt
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from training import snapshot
from training.errors import TrainingError

KEYSPACE_PATTERN = r"[a-z][a-z0-9_]{0,47}"
DEFAULT_PAGE_SIZE = 500
MAX_PAGE_SIZE = 5000  # ~1 KiB a row: a page stays within a few MiB however large the table
SPOOL_DIR = ".export-in-progress"
QUERY = "SELECT id, label, digit, input, model_version, updated_at FROM {ks}.feedback_by_id"


@dataclass(frozen=True)
class CassandraSettings:
    hosts: tuple[str, ...] = ("127.0.0.1",)
    port: int = 9042
    keyspace: str = "mnist"
    local_dc: str = ""
    username: str = ""
    password: str = field(default="", repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CassandraSettings:
        hosts = tuple(h.strip() for h in env.get("CASSANDRA_HOSTS", "127.0.0.1").split(",") if h.strip())
        port_text = env.get("CASSANDRA_PORT", "9042").strip() or "9042"
        keyspace = env.get("CASSANDRA_KEYSPACE", "mnist").strip() or "mnist"
        username = env.get("CASSANDRA_USERNAME", "").strip()
        password = env.get("CASSANDRA_PASSWORD", "")
        if not hosts:
            raise TrainingError("CASSANDRA_HOSTS must name at least one host")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise TrainingError(f"CASSANDRA_PORT must be a TCP port, got {port_text!r}")
        if not re.fullmatch(KEYSPACE_PATTERN, keyspace):
            raise TrainingError(f"CASSANDRA_KEYSPACE must match {KEYSPACE_PATTERN}, got {keyspace!r}")
        if bool(username) != bool(password):
            raise TrainingError("set both CASSANDRA_USERNAME and CASSANDRA_PASSWORD, or neither")
        return cls(
            hosts, int(port_text), keyspace, env.get("CASSANDRA_LOCAL_DC", "").strip(), username, password
        )


@dataclass(frozen=True)
class Window:
    """Labels given in [since, until) (UTC); `until` is fixed when an export starts, so a resume keeps it."""

    since: dt.datetime | None
    until: dt.datetime

    def holds(self, when: dt.datetime) -> bool:
        return (self.since is None or when >= self.since) and when < self.until

    def as_dict(self) -> dict:
        return {
            "field": "updated_at",
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat(),
        }


def parse_time(text: str) -> dt.datetime:
    """An ISO-8601 time; without a zone it is UTC."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise TrainingError(f"not an ISO-8601 time: {text!r} (e.g. 2026-11-30T12:00:00Z)") from None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def connect(settings: CassandraSettings, *, timeout_s: float = 10.0):
    from cassandra import AuthenticationFailed
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable
    from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

    policy = TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=settings.local_dc or None))
    cluster = Cluster(
        list(settings.hosts),
        port=settings.port,
        protocol_version=5,
        execution_profiles={
            EXEC_PROFILE_DEFAULT: ExecutionProfile(load_balancing_policy=policy, request_timeout=timeout_s)
        },
        connect_timeout=timeout_s,
        control_connection_timeout=timeout_s,
        auth_provider=(
            PlainTextAuthProvider(settings.username, settings.password) if settings.username else None
        ),
    )
    try:
        return cluster, cluster.connect()
    except (NoHostAvailable, AuthenticationFailed) as exc:
        cluster.shutdown()
        where = ", ".join(f"{h}:{settings.port}" for h in settings.hosts)
        raise TrainingError(f"Cassandra at {where} unreachable ({str(exc).splitlines()[0][:200]})") from None


@dataclass
class Counts:
    read: int = 0  # rows the query returned
    outside_window: int = 0
    invalid: int = 0  # not a 784-byte input or a label outside 0-9
    duplicates: int = 0  # the same image again (the latest label is kept)
    conflicting_labels: int = 0  # ... with a different label than the one kept

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _progress_bar():
    from tqdm import tqdm

    # disable=None: a live bar on a terminal, nothing in logs (the summary line is printed either way).
    return tqdm(desc="feedback rows", unit=" rows", file=sys.stderr, disable=None, leave=False)


def export_snapshot(
    settings: CassandraSettings,
    root: Path,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
    holdout_percent: int = snapshot.DEFAULT_HOLDOUT_PERCENT,
    min_labels: int = snapshot.DEFAULT_MIN_LABELS,
    max_pages: int | None = None,
    say: Callable[[str], None] = print,
) -> tuple[Path | None, dict]:
    """Read the feedback table into a new snapshot under `root`; returns (its directory, its manifest).

    `max_pages` stops after that many pages (this run), leaving the checkpoint for the next run: returns
    (None, the checkpoint state)."""
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise TrainingError(f"page size must be 1-{MAX_PAGE_SIZE}, got {page_size}")
    if not 0 < holdout_percent < 100:
        raise TrainingError(f"holdout percent must be 1-99, got {holdout_percent}")
    end = until or dt.datetime.now(dt.UTC)
    if since is not None and since >= end:
        raise TrainingError(
            f"--since {since.isoformat()} is not before --until {end.isoformat(timespec='seconds')}"
            f"{' (now)' if until is None else ''}: no label can be in the window"
        )
    root = Path(root)
    with snapshot.exclusive(root):
        spool = snapshot.Spool(root / SPOOL_DIR)
        if spool.damaged:
            say(f"the export in progress was damaged ({spool.damaged}): starting over")
        request = {
            "keyspace": settings.keyspace,
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
            "holdout_percent": holdout_percent,
        }
        if spool.state and spool.state.get("request") != request:
            say("an export with other settings was in progress: starting over")
            spool.remove()
            spool = snapshot.Spool(root / SPOOL_DIR)
        if spool.state:
            say(f"resuming the export: {spool.state['counts']['read']} rows read before")
        window = Window(
            since,
            until or (parse_time(spool.state["window"]["until"]) if spool.state else dt.datetime.now(dt.UTC)),
        )
        counts = Counts(**spool.state.get("counts", {}))
        paging_state = bytes.fromhex(spool.state["paging_state"]) if spool.state.get("paging_state") else None
        if spool.state.get("done"):
            paging_state = None
        cluster, session = connect(settings)
        try:
            statement = session.prepare(QUERY.format(ks=settings.keyspace))
            pages = 0
            bar = _progress_bar()
            bar.update(counts.read)
            while not spool.state.get("done"):
                bound = statement.bind(())
                bound.fetch_size = page_size
                result = session.execute(bound, paging_state=paging_state)
                rows = result.current_rows
                for row in rows:
                    _take(row, spool, window, counts)
                bar.update(len(rows))
                paging_state = result.paging_state
                spool.checkpoint(
                    request=request,
                    window=window.as_dict(),
                    counts=counts.as_dict(),
                    paging_state=paging_state.hex() if paging_state else None,
                    done=paging_state is None,
                )
                pages += 1
                if max_pages is not None and pages >= max_pages and paging_state is not None:
                    bar.close()
                    say(f"stopped after {pages} page(s), {counts.read} rows read; run again to continue")
                    return None, spool.state
            bar.close()
        except Exception as exc:
            from cassandra import DriverException

            if isinstance(exc, DriverException | OSError):
                raise TrainingError(
                    f"reading feedback failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                    "run the same command again to continue from the last page"
                ) from None
            raise
        finally:
            cluster.shutdown()
        path, manifest = snapshot.publish(
            spool.rows(),
            root,
            holdout_percent=holdout_percent,
            min_labels=min_labels,
            source={"table": f"{settings.keyspace}.feedback_by_id", "page_size": page_size},
            window=window.as_dict(),
            counts=counts.as_dict(),
        )
        spool.remove()
        return path, manifest


def _take(row, spool: snapshot.Spool, window: Window, counts: Counts) -> None:
    counts.read += 1
    updated = row.updated_at
    if updated is None or not window.holds(updated.replace(tzinfo=dt.UTC)):
        counts.outside_window += 1
        return
    label, image = row.label, row.input
    if label is None or not 0 <= label <= 9 or image is None or len(image) != snapshot.IMAGE_BYTES:
        counts.invalid += 1
        return
    predicted = row.digit if row.digit is not None and 0 <= row.digit <= 9 else 255
    version = row.model_version if row.model_version is not None else -1
    updated_ms = int(updated.replace(tzinfo=dt.UTC).timestamp() * 1000)
    outcome, conflict = spool.add(bytes(image), label, predicted, version, updated_ms)
    if outcome != "new":
        counts.duplicates += 1
        counts.conflicting_labels += conflict

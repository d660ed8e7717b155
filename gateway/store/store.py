"""`PredictionStore`: the gateway's prediction log in Cassandra; an answered prediction is never lost.

Writes go one way: log, ship, trim. `record()` appends the prediction to a local write-ahead log (wal.py) and
returns once it is durable: an fsync shared with the requests logging at the same moment (group commit).
One shipper thread per process reads the log oldest first and sends it to Cassandra as idempotent inserts
(by day, by id), several rows per request (small UNLOGGED batches, one day partition each for
`predictions_by_day`, under Cassandra's 5 KiB batch warning for `predictions_by_id`); once both rows of every
record of a round are acknowledged it trims them from the log. When Cassandra is down, slow or failing the
shipper retries the same round with backoff while the log grows; a process that dies leaves its log behind and
any live one (the restarted worker, a sibling) claims and ships it. When the log holds `max_log_bytes`,
`record()` raises `StoreUnavailable` (a 503: the client gets no id) rather than drop anything it answered.

The shipper lingers `write_linger` seconds (default 50 ms) after a quiet spell so that more records join a
round (fewer, larger requests cost less CPU here and in Cassandra); a lookup of a prediction this process
still holds (`get`, `add_feedback`, `recent`) cuts the linger short and waits for it. Request threads never
touch the driver (the costliest Python on the request path).

Everything that belongs to a process (driver threads, log segments, the shipper) is created on first use, in
the process that uses it: make the store before or after a server forks, never share a used one across a
fork."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import struct
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cassandra import DriverException, InvalidRequest
from cassandra.cluster import Cluster, NoHostAvailable, Session
from cassandra.query import BatchStatement, BatchType, PreparedStatement
from cassandra.util import datetime_from_uuid1

from gateway.errors import Conflict, InvalidInput, NotFound, StoreUnavailable
from gateway.per_process import PerProcess
from gateway.rollout import Event, RolloutState, encode_detail
from gateway.store import buckets, stats
from gateway.store.cluster import Credentials, build_cluster, parse_hosts
from gateway.store.migrate import validate_keyspace
from gateway.store.records import PredictionRecord
from gateway.store.wal import Batch, LogError, LogFull, WriteAheadLog, set_aside

log = logging.getLogger(__name__)

_COLUMNS = (
    "created_at, filename, image_sha256, digit, probabilities, model_name, model_version, "
    "preprocess_ms, model_ms, total_ms, client_address, routing, request_id"
)
_ROLLOUT_COLUMNS = (
    "status, canary_version, stable_version, canary_percent, shadow, steps, step_index, step_seconds, "
    "step_started_at, lease_until, started_by, started_at, reason, updated_at"
)
_STATEMENTS = {
    "write_by_day": f"INSERT INTO {{ks}}.predictions_by_day (day, id, {_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?",
    "write_by_id": f"INSERT INTO {{ks}}.predictions_by_id (id, input, {_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?",
    "read_day": f"SELECT id, {_COLUMNS} FROM {{ks}}.predictions_by_day WHERE day = ? LIMIT ?",
    "read_day_before": f"SELECT id, {_COLUMNS} FROM {{ks}}.predictions_by_day "
    "WHERE day = ? AND id < ? LIMIT ?",
    "read_id": f"SELECT id, input, {_COLUMNS} FROM {{ks}}.predictions_by_id WHERE id = ?",
    "read_labels": "SELECT id, label FROM {ks}.feedback_by_id WHERE id IN ?",
    # Lightweight transactions: the first label wins, and only an operator's correction replaces it.
    "write_feedback_first": "INSERT INTO {ks}.feedback_by_id (id, label, digit, input, model_name, "
    "model_version, predicted_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, toTimestamp(now())) IF NOT EXISTS",
    # From the label read just before: a concurrent correction makes it not apply (and the counts stay right).
    "correct_feedback": "UPDATE {ks}.feedback_by_id SET label = ?, updated_at = toTimestamp(now()) "
    "WHERE id = ? IF label = ?",
    # The scorecard's counters (gateway/store/stats.py).
    "read_version_stats": "SELECT minute, metric, value FROM {ks}.version_stats "
    "WHERE model_name = ? AND model_version = ? AND day = ? AND minute >= ? AND minute <= ?",
    "ping": "SELECT release_version FROM system.local",
    # Rollouts (migration v003): one row per model, written with a lightweight transaction on updated_at.
    "read_rollout": f"SELECT {_ROLLOUT_COLUMNS} FROM {{ks}}.rollouts WHERE model_name = ?",
    "create_rollout": f"INSERT INTO {{ks}}.rollouts (model_name, {_ROLLOUT_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS",
    "update_rollout": "UPDATE {ks}.rollouts SET "
    + ", ".join(f"{c} = ?" for c in _ROLLOUT_COLUMNS.split(", "))
    + " WHERE model_name = ? IF updated_at = ?",
    "add_rollout_event": "INSERT INTO {ks}.rollout_events (model_name, at, actor, action, canary_version, "
    "canary_percent, detail) VALUES (?, now(), ?, ?, ?, ?, ?)",
    "read_rollout_events": "SELECT at, actor, action, canary_version, canary_percent, detail "
    "FROM {ks}.rollout_events WHERE model_name = ? LIMIT ?",
    "count": "UPDATE {ks}.version_stats SET value = value + ? "
    "WHERE model_name = ? AND model_version = ? AND day = ? AND minute = ? AND metric = ?",
}
_IDEMPOTENT = {"write_by_day", "write_by_id"}
# Rows per write request. A by-day batch holds one partition (one mutation; Cassandra does not size-check it).
# A by-id batch spans partitions: Cassandra warns above 5 KiB (`batch_size_warn_threshold`), and a row weighs
# ~1,272 bytes plus its filename's UTF-8 (measured on Cassandra 5.0), so those batches are cut by size.
_BATCH_ROWS = {"write_by_day": 16, "write_by_id": 4}
_BY_ID_ROW_BYTES = 1300
_BY_ID_BATCH_BYTES = 4800
_DAYS_PER_ROUND = 8  # day partitions read concurrently while looking for a page of recent predictions
MAX_STATS_VERSIONS = 16  # versions one scorecard read may ask for
MAX_STATS_DAYS = 8  # day partitions per version (a 7-day window touches 8)
_CORRECTION_TRIES = 3  # an operator's correction racing another one re-reads the label this often
MAX_DAYS_PER_PAGE = 120  # day partitions one page may read (the default 90-day retention fits in one)
SCAN_SECONDS = 3.0  # after this, a page stops reading partitions and comes back short, with a cursor
_HELD_IDS = 4096  # ids of this process's unshipped records kept for read-your-writes (beyond: no waiting)
_ORPHAN_SCAN_S = 10.0  # how often to look for logs left by processes that died
_COUNTS_PER_BATCH = 100  # counter updates per request (one version_stats partition each)
_MAX_PENDING_COUNTS = 10_000  # counters added outside records (errors, agreement) awaiting the shipper
# The latest `if_updated_at` a rollout write can name: the write is stamped a millisecond after it.
_LAST_UPDATED_AT = datetime.max.replace(tzinfo=UTC) - timedelta(milliseconds=1)


@dataclass(frozen=True)
class FeedbackOutcome:
    """What a feedback label changed: `first` (counted), `same` (already so: nothing), `corrected` (an
    operator replaced `previous`: the counts moved)."""

    change: str
    label: int
    predicted: int
    model_name: str
    model_version: int | None
    previous: int | None = None


@dataclass(frozen=True)
class Page:
    """Recent predictions, newest first; pass `cursor` back to get the next page (None: no more)."""

    items: list[PredictionRecord]
    cursor: bytes | None


class PredictionStore:
    def __init__(
        self,
        hosts: str | list[str],
        port: int = 9042,
        keyspace: str = "mnist",
        spool_dir: Path | str = ".state/gateway-spool",
        *,
        ttl_seconds: int = 90 * 86400,
        max_in_flight: int = 256,
        request_timeout: float = 5.0,
        connect_timeout: float = 3.0,
        local_dc: str | None = None,
        credentials: Credentials | None = None,
        consistency: str = "ONE",
        max_backoff: float = 10.0,
        write_linger: float = 0.05,
        max_log_bytes: int = 256 * 1024 * 1024,
        sync: bool = True,
    ) -> None:
        self.hosts = parse_hosts(hosts)
        self.port = int(port)
        self.keyspace = validate_keyspace(keyspace)
        self.spool_dir = Path(spool_dir)
        if ttl_seconds < 0:
            raise ValueError("ttl_seconds must be >= 0 (0: keep forever)")
        self.ttl_seconds = int(ttl_seconds)
        self.max_in_flight = max_in_flight  # records per shipping round
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.local_dc = local_dc
        self.credentials = credentials
        self.consistency = consistency  # of every read and write (gateway/replication.py)
        self.max_backoff = max_backoff
        self.write_linger = write_linger
        self.max_log_bytes = max_log_bytes
        self.sync = sync
        self._process = PerProcess(self._start)

    # ------------------------------------------------------------------------------------------- lifecycle

    def _ensure_started(self) -> None:
        self._process.ensure()

    def _start(self) -> None:
        """The first use in this process (gateway/per_process.py): nothing made by a parent is touched."""
        self._lock = threading.Lock()
        self._shipped_cond = threading.Condition(self._lock)  # a round was acknowledged
        self._work = threading.Event()  # a record was logged
        self._flush = threading.Event()  # cuts the linger short
        self._draining = threading.Event()  # closing: ship what is logged, no lingering
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._cluster: Cluster | None = None
        self._session: Session | None = None
        self._prepared: dict[str, PreparedStatement] = {}
        self._log = WriteAheadLog(self.spool_dir, max_bytes=self.max_log_bytes, sync=self.sync)
        self._held: set[uuid.UUID] = set()  # logged here, not yet acknowledged (read-your-writes)
        self._healthy = False  # the last round reached Cassandra: worth waiting for
        self._counts = {"logged": 0, "shipped": 0, "refused": 0, "rejected": 0}
        self._extra_counts: dict[stats.CounterKey, int] = {}  # add_counts(), for the next round
        self._last_problem = ""
        self._shipper = threading.Thread(target=self._ship_forever, name="store-shipper", daemon=True)
        self._shipper.start()

    def close(self, timeout: float = 10.0) -> None:
        """Within `timeout`, ship what the log holds while Cassandra takes it; then stop the shipper and
        release the log (what is left stays on disk for the next process)."""
        if not self._process.started:
            return
        deadline = time.monotonic() + timeout
        self._draining.set()
        self._flush.set()
        self._work.set()
        with self._shipped_cond:  # the records, and the counts that are not records (errors, agreement)
            while (
                (self._log.pending()[0] or self._extra_counts)
                and self._healthy
                and time.monotonic() < deadline
            ):
                self._shipped_cond.wait(max(deadline - time.monotonic(), 0.01))
        self._stopping.set()
        self._work.set()
        self._shipper.join(max(deadline - time.monotonic(), 1.0))
        if self._cluster is not None:
            self._cluster.shutdown()
        records, _ = self._log.pending()  # before closing the log, which forgets its segments
        # A shipper stuck in the driver keeps the log's descriptors: the process is ending anyway.
        if self._shipper.is_alive():
            log.warning("the store's shipper did not stop within %.0f s", timeout)
        else:
            self._log.close()
        if records:
            log.info("store closed; %d prediction(s) left in %s for the next start", records, self.spool_dir)
        self._process.forget()

    # ------------------------------------------------------------------------------------------- writes

    def record(self, record: PredictionRecord) -> None:
        """Log one prediction durably; it reaches Cassandra later. Raises `StoreUnavailable` when the log
        cannot take it (full, or the disk fails): the caller must not hand out its id."""
        self._ensure_started()
        with self._lock:
            held = len(self._held) < _HELD_IDS
            if held:
                self._held.add(record.id)
        try:
            self._log.append(record.to_json_bytes())
        except LogError as exc:
            with self._lock:
                self._held.discard(record.id)
                self._counts["refused"] += 1
            full = isinstance(exc, LogFull)
            self._problem(f"the prediction log {'is full' if full else 'cannot be written'} ({exc})")
            raise StoreUnavailable(
                "predictions cannot be recorded right now (the local log is full)"
                if full
                else "predictions cannot be recorded right now (the local log cannot be written)"
            ) from None
        with self._lock:
            self._counts["logged"] += 1
        self._work.set()

    def _ship_forever(self) -> None:
        """The shipper thread: one pass after another until closed. A pass that fails outside Cassandra (the
        disk, a bug) is reported once and retried after a backoff: a shipper that stopped would let the log
        fill up unseen while predictions still answer."""
        self._backoff, self._last_scan = 0.2, float("-inf")
        while not self._stopping.is_set():
            try:
                self._ship_pass()
            except Exception as exc:
                self._problem(f"the shipper failed ({_describe(exc)}); retrying")
                self._back_off()

    def _ship_pass(self) -> None:
        """Claim orphans now and then, connect, ship one round oldest first; back off while failing."""
        if time.monotonic() - self._last_scan > _ORPHAN_SCAN_S:
            self._last_scan = time.monotonic()
            found = self._log.claim_orphans()
            if found:
                log.info("claimed %d logged prediction(s) left by a stopped process", found)
        if self._session is None and not self._connect():  # reads wait for it too, so even when idle
            self._back_off()
            return
        self._work.clear()
        pending = self._log.pending()[0]
        if pending == 0:
            if self._extra_counts:  # counts without records (errors, agreement): sent on their own
                error = self._write_counts({})
                if error is not None:
                    self._problem(f"writing counters to Cassandra failed ({_describe(error)})")
                    self._back_off()
                return
            self._work.wait(_ORPHAN_SCAN_S)
            return
        if not self._healthy and not self.ping():  # failing: probe, not re-read and re-send a shipment
            self._back_off()
            return
        if self.write_linger > 0 and pending < self.max_in_flight // 4 and not self._draining.is_set():
            self._flush.wait(self.write_linger)  # let more records join this round
            self._flush.clear()
        error = self._ship(self._log.read(self.max_in_flight))
        if error is None:
            self._backoff = 0.2
            return
        self._problem(f"writing to Cassandra failed ({_describe(error)})")
        self._back_off()

    def _back_off(self) -> None:
        self._stopping.wait(self._backoff)
        self._backoff = min(self._backoff * 2, self.max_backoff)

    def _ship(self, batch: Batch | None) -> BaseException | None:
        """Send one round and wait for it; on success trim it from the log. Returns the error, if any."""
        if batch is None:
            return None
        records, bound = [], {}
        for payload in batch.payloads:
            try:
                record = PredictionRecord.from_json_bytes(payload)
                # Bound here, one record at a time: a value the driver cannot encode is this record's fault.
                bound[record.id] = {name: self._bind(name, record) for name in _IDEMPOTENT}
                records.append(record)
            except (ValueError, TypeError, KeyError, OverflowError, struct.error) as exc:
                self._reject(payload, exc)  # an OSError leaves the round in the log, retried later
        sent = [
            (group, self._session.execute_async(self._statement([bound[r.id][name] for r in group])))
            for name in ("write_by_day", "write_by_id")
            for group in _groups(name, records)
        ]
        refused: dict[uuid.UUID, tuple[PredictionRecord, BaseException]] = {}
        for group, future in sent:
            try:
                future.result()
            except InvalidRequest as exc:  # never succeeds, however often retried: set aside
                refused.update((r.id, (r, exc)) for r in group)
            except Exception as exc:  # the rows stay logged; the same round is retried
                with self._lock:
                    self._healthy = False
                return exc
        for record, exc in refused.values():
            self._reject(record.to_json_bytes(), exc)
        records = [r for r in records if r.id not in refused]
        # Counted once the rows are in, before the log forgets them: at least once (a round shipped again
        # after a failure here or a crash counts again).
        counts: dict[stats.CounterKey, int] = {}
        for record in records:
            stats.count_prediction(counts, record)
        error = self._write_counts(counts)
        if error is not None:
            with self._lock:
                self._healthy = False
            return error
        self._log.commit(batch)
        with self._shipped_cond:
            self._counts["shipped"] += len(records)
            self._held.difference_update(bound)  # shipped or set aside: nothing to wait for
            if not self._healthy and self._last_problem:
                log.warning("Cassandra takes writes again; shipping the log")
                self._last_problem = ""
            self._healthy = True
            self._shipped_cond.notify_all()
        return None

    def _statement(self, statements: list):
        if len(statements) == 1:
            return statements[0]
        batch = BatchStatement(BatchType.UNLOGGED)
        for statement in statements:
            batch.add(statement)
        batch.is_idempotent = True  # the same rows again: retrying is safe
        return batch

    def add_counts(self, counts: dict[stats.CounterKey, int]) -> None:
        """Add to version_stats counters with the shipper's next round (never a Cassandra call here): model
        server errors and shadow agreement, which are not records. Beyond _MAX_PENDING_COUNTS waiting
        counters (Cassandra down for long) new ones are dropped, said once."""
        self._ensure_started()
        with self._lock:
            for key, value in counts.items():
                if key in self._extra_counts or len(self._extra_counts) < _MAX_PENDING_COUNTS:
                    self._extra_counts[key] = self._extra_counts.get(key, 0) + value
                else:
                    self._problem("too many counters wait for Cassandra; new ones are dropped")
        self._work.set()

    def _write_counts(self, counts: dict[stats.CounterKey, int]) -> BaseException | None:
        """Send `counts` plus what add_counts() gathered, one counter batch per version_stats partition (at
        most _COUNTS_PER_BATCH updates each), and wait. On failure what add_counts() gave is kept for the
        next round; the caller retries its records (whose counts it computes again)."""
        with self._lock:
            extra, self._extra_counts = self._extra_counts, {}
        merged = dict(counts)
        for key, value in extra.items():
            merged[key] = merged.get(key, 0) + value
        by_partition: dict[tuple, list] = {}
        for (model, version, minute, metric), value in merged.items():
            day = stats.day_of(minute)
            bound = self._prepared["count"].bind([value, model, version, day, minute, metric])
            by_partition.setdefault((model, version, day), []).append(bound)
        futures = []
        for updates in by_partition.values():
            for i in range(0, len(updates), _COUNTS_PER_BATCH):
                chunk = updates[i : i + _COUNTS_PER_BATCH]
                if len(chunk) == 1:
                    statement = chunk[0]
                else:
                    statement = BatchStatement(BatchType.COUNTER)
                    for update in chunk:
                        statement.add(update)
                futures.append(self._session.execute_async(statement))
        try:
            for future in futures:
                future.result()
        except Exception as exc:
            with self._lock:
                for key, value in extra.items():
                    self._extra_counts[key] = self._extra_counts.get(key, 0) + value
            return exc
        with self._shipped_cond:
            self._shipped_cond.notify_all()  # close() waits for these too
        return None

    def _bind(self, name: str, record: PredictionRecord):
        values = [
            record.created_at,
            record.filename,
            record.image_sha256,
            record.digit,
            list(record.probabilities),
            record.model_name,
            record.model_version,
            record.preprocess_ms,
            record.model_ms,
            record.total_ms,
            record.client_addr,
            record.routing,
            record.request_id,
        ]
        key = (
            [buckets.day_of(record.id), record.id]
            if name == "write_by_day"
            else [record.id, record.input_image]
        )
        return self._prepared[name].bind([*key, *values, self.ttl_seconds])

    def replay_spool(self) -> int:
        """Ship what the log holds now, without lingering; wait up to `request_timeout` for it and return
        how many records were shipped meanwhile. Never raises."""
        self._ensure_started()
        deadline = time.monotonic() + self.request_timeout
        with self._shipped_cond:
            before = self._counts["shipped"]
        self._flush.set()
        self._work.set()
        with self._shipped_cond:
            while self._log.pending()[0] and self._session is not None and time.monotonic() < deadline:
                self._flush.set()
                self._shipped_cond.wait(0.05)
            return self._counts["shipped"] - before

    def _reject(self, payload: bytes, exc: BaseException) -> None:
        """A logged record that cannot be decoded or written (a bug, a format change): set aside loudly, not
        dropped."""
        path = set_aside(self.spool_dir, payload)
        with self._lock:
            self._counts["rejected"] += 1
        log.error("a logged record could not be stored (%s); kept in %s", exc, path)

    def _connect(self) -> bool:
        cluster = build_cluster(
            self.hosts,
            self.port,
            request_timeout=self.request_timeout,
            connect_timeout=self.connect_timeout,
            local_dc=self.local_dc,
            credentials=self.credentials,
            consistency=self.consistency,
        )
        try:
            session = cluster.connect()
            prepared = {
                name: session.prepare(cql.format(ks=self.keyspace)) for name, cql in _STATEMENTS.items()
            }
        except Exception as exc:
            cluster.shutdown()
            hint = (
                "; has `mnist-migrate` run?"
                if "unconfigured table" in str(exc) or "Keyspace" in str(exc)
                else ""
            )
            self._problem(
                f"cannot connect to Cassandra at {','.join(self.hosts)}:{self.port} ({_describe(exc)}){hint}"
            )
            return False
        for name in _IDEMPOTENT:
            prepared[name].is_idempotent = True  # the driver may retry them: same id, same row
        with self._lock:
            self._prepared, self._cluster, self._session = prepared, cluster, session
            self._healthy = True
        self._connected.set()
        return True

    def _problem(self, message: str) -> None:
        """Log a new kind of trouble once (at WARNING), not once per record."""
        if message != self._last_problem:
            self._last_problem = message
            log.warning("%s; predictions wait in the log in %s", message, self.spool_dir)

    # ------------------------------------------------------------------------------------------- reads

    def _ready_session(self) -> Session:
        self._ensure_started()
        if not self._connected.wait(self.connect_timeout):
            raise StoreUnavailable("the prediction store (Cassandra) is not reachable")
        return self._session

    def _read(self, name: str, values: list, *, timeout: float | None = None):
        session = self._ready_session()
        try:
            return session.execute(self._prepared[name].bind(values), timeout=timeout or self.request_timeout)
        except (DriverException, NoHostAvailable, OSError) as exc:
            raise StoreUnavailable(f"reading from Cassandra failed: {_describe(exc)}") from exc

    def _flush_pending(self, ids: list[uuid.UUID] | None = None) -> None:
        """Read your own writes: the predictions this process logged and Cassandra has not acknowledged yet
        (`ids`, or all of them) are shipped now and waited for, so a lookup right after a predict (the web
        page's feedback and recent table) finds them. No waiting while Cassandra is failing."""
        if not self._process.started:
            return
        deadline = time.monotonic() + self.write_linger + self.request_timeout
        with self._shipped_cond:
            waiting = set(self._held) if ids is None else self._held.intersection(ids)
            while waiting and self._healthy:
                self._flush.set()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._shipped_cond.wait(
                    min(remaining, 0.05)
                )  # and flush again: the shipper may have cleared it
                waiting &= self._held

    def get(self, prediction_id: uuid.UUID) -> PredictionRecord | None:
        self._flush_pending([prediction_id])
        row = self._read("read_id", [prediction_id]).one()
        if row is None:
            return None
        labels = self._labels([prediction_id])
        return _record_from_row(row, row.input, labels.get(prediction_id))

    def recent(self, limit: int = 20, cursor: bytes | None = None) -> Page:
        """The newest predictions first, across day partitions; `cursor` continues a previous page. A page
        reads at most MAX_DAYS_PER_PAGE partitions for at most SCAN_SECONDS: it may come back short (even
        empty) with a cursor that continues the scan."""
        if not 1 <= limit <= 1000:
            raise InvalidInput("limit must be from 1 to 1000")
        after = _decode_cursor(cursor)
        self._flush_pending()
        retention_days = self.ttl_seconds // 86400 + 1 if self.ttl_seconds else 3660
        start, oldest = buckets.scan_window(datetime.now(UTC), retention_days, after)
        session = self._ready_session()
        rows: list = []
        days = list(itertools.islice(buckets.days_newest_first(start, oldest), MAX_DAYS_PER_PAGE + 1))
        deadline = time.monotonic() + SCAN_SECONDS
        scanned = 0
        while scanned < min(len(days), MAX_DAYS_PER_PAGE) and len(rows) <= limit:
            if scanned and time.monotonic() > deadline:
                break
            chunk = days[scanned : min(scanned + _DAYS_PER_ROUND, MAX_DAYS_PER_PAGE)]
            futures = []
            for day in chunk:  # one page can need at most limit + 1 rows from any day
                if after is not None and day == buckets.day_of(after):
                    bound = self._prepared["read_day_before"].bind([day, after, limit + 1])
                else:
                    bound = self._prepared["read_day"].bind([day, limit + 1])
                futures.append(session.execute_async(bound, timeout=self.request_timeout))
            try:
                for future in futures:
                    rows.extend(future.result())
                    if len(rows) > limit:
                        break
            except (DriverException, NoHostAvailable, OSError) as exc:
                raise StoreUnavailable(f"reading from Cassandra failed: {_describe(exc)}") from exc
            scanned += len(chunk)
        page = rows[:limit]
        labels = self._labels([row.id for row in page])
        items = [_record_from_row(row, b"", labels.get(row.id)) for row in page]
        if len(rows) > limit:
            return Page(items, page[-1].id.bytes)
        if scanned < len(days):  # out of partitions or time: continue below the last day read
            return Page(items, buckets.start_of_day_cursor(days[scanned - 1]).bytes)
        return Page(items, None)

    def _labels(self, ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
        if not ids:
            return {}
        return {row.id: row.label for row in self._read("read_labels", [ids])}

    def add_feedback(self, prediction_id: uuid.UUID, label: int, *, correct: bool = False) -> FeedbackOutcome:
        """Record the true digit for a prediction. The first label wins (a lightweight transaction): the
        same label again is a no-op, a different one is a Conflict unless `correct` (an operator's fix).
        A first label is counted in `version_stats` at the prediction's minute; a correction moves it."""
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 9:
            raise InvalidInput("a label is an integer from 0 to 9")
        self._flush_pending([prediction_id])
        row = self._read("read_id", [prediction_id]).one()
        if row is None:
            raise NotFound("no prediction with this id")
        if row.routing == "shadow":  # no user saw it: its version's accuracy counts what users were answered
            raise Conflict(
                f"this is a shadow copy (version {row.model_version}'s answer to prediction "
                f"{row.request_id}, which the user got): send the feedback for {row.request_id}"
            )
        copied = [row.digit, row.input, row.model_name, row.model_version, row.created_at]
        first = self._read("write_feedback_first", [prediction_id, label, *copied])
        outcome = functools.partial(
            FeedbackOutcome,
            label=label,
            predicted=row.digit,
            model_name=row.model_name,
            model_version=row.model_version,
        )
        if first.was_applied:
            self._count_feedback(row, stats.feedback_counts(label, row.digit))
            return outcome("first")
        current = first.one().label
        for _ in range(_CORRECTION_TRIES):
            if current == label:
                return outcome("same")
            if not correct:
                raise Conflict(
                    f"this prediction already has feedback (label {current}); only an operator can change it"
                )
            moved = self._read("correct_feedback", [label, prediction_id, current])
            if moved.was_applied:
                counts = stats.feedback_counts(current, row.digit, -1)
                for metric, n in stats.feedback_counts(label, row.digit).items():
                    counts[metric] = counts.get(metric, 0) + n
                self._count_feedback(row, counts)
                return outcome("corrected", previous=current)
            current = moved.one().label
        raise Conflict("this prediction's label is being changed by someone else; try again")

    def _count_feedback(self, row, counts: dict[str, int]) -> None:
        """Add `counts` to the prediction's version and minute in one counter batch (one partition). A
        failure is logged, not raised: the label is stored, and a retry by the client would be a no-op."""
        if row.model_version is None:
            return
        created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
        minute = stats.minute_of(created)
        key = [row.model_name, row.model_version, stats.day_of(minute), minute]
        batch = BatchStatement(BatchType.COUNTER)
        for metric, n in counts.items():
            if n:
                batch.add(self._prepared["count"].bind([n, *key, metric]))
        try:
            self._ready_session().execute(batch, timeout=self.request_timeout)
        except (DriverException, NoHostAvailable, OSError, StoreUnavailable) as exc:
            log.warning("feedback counters of %s v%s not updated: %s", *key[:2], _describe(exc))

    def version_stats(
        self, model_name: str, versions: list[int], start: datetime, end: datetime
    ) -> dict[int, list[tuple[datetime, str, int]]]:
        """The `version_stats` rows (minute, metric, value) of each version from minute `start` to minute
        `end` (both included): one read per version and day partition, all at once."""
        if not 0 < len(versions) <= MAX_STATS_VERSIONS:
            raise InvalidInput(f"ask for 1 to {MAX_STATS_VERSIONS} versions")
        first_day, last_day = stats.day_of(start), stats.day_of(end)
        days = [first_day + timedelta(days=i) for i in range((last_day - first_day).days + 1)]
        if not 0 < len(days) <= MAX_STATS_DAYS:
            raise InvalidInput(f"a scorecard reads 1 to {MAX_STATS_DAYS} days")
        session = self._ready_session()
        statement = self._prepared["read_version_stats"]
        futures = [
            (
                version,
                session.execute_async(
                    statement.bind([model_name, version, day, start, end]), timeout=self.request_timeout
                ),
            )
            for version in versions
            for day in days
        ]
        rows: dict[int, list[tuple[datetime, str, int]]] = {version: [] for version in versions}
        try:
            for version, future in futures:
                rows[version].extend((r.minute, r.metric, r.value) for r in future.result())
        except (DriverException, NoHostAvailable, OSError) as exc:
            raise StoreUnavailable(f"reading from Cassandra failed: {_describe(exc)}") from exc
        return rows

    def read_rollout(self, model: str, *, timeout: float | None = None) -> RolloutState | None:
        """The model's rollout state, or None when it has none. Waits at most `timeout` for a connection too
        (the gateway's rollout cache reads on the request path)."""
        self._ensure_started()
        if timeout is not None and not self._connected.wait(timeout):
            raise StoreUnavailable("the prediction store (Cassandra) is not reachable")
        row = self._read("read_rollout", [model], timeout=timeout).one()
        return None if row is None else _rollout_from_row(row)

    def write_rollout(
        self, model: str, state: RolloutState, *, if_updated_at: datetime | None, event: Event | None
    ) -> RolloutState:
        """Replace the model's rollout state if nobody changed it since `if_updated_at` (None: only when it
        has no state, or a state that is not running), then append `event`. Returns the stored state with
        its new `updated_at`; a lost race is a Conflict."""
        now = datetime.now(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # Cassandra keeps milliseconds
        if if_updated_at is None:
            written = _rollout_values(state, now)
            first = self._read("create_rollout", [model, *written])
            if first.was_applied:
                return self._rollout_written(model, state, now, event)
            current = first.one()
            if current.status == "running":
                raise Conflict(f"the rollout of {model!r} is running: send its updated_at as if_updated_at")
            if_updated_at = _aware(current.updated_at)
        if if_updated_at > _LAST_UPDATED_AT:  # no write is ever stamped so late: it cannot be the stored one
            raise _changed_since(model, if_updated_at)
        # Later than the state it replaces, even within one millisecond: every write has its own updated_at.
        now = max(now, if_updated_at + timedelta(milliseconds=1))
        result = self._read("update_rollout", [*_rollout_values(state, now), model, if_updated_at])
        if not result.was_applied:
            raise _changed_since(model, if_updated_at)
        return self._rollout_written(model, state, now, event)

    def _rollout_written(
        self, model: str, state: RolloutState, updated_at: datetime, event: Event | None
    ) -> RolloutState:
        if event is None:  # a lease renewal: no line in the history
            return dataclasses.replace(state, updated_at=updated_at)
        self._read(
            "add_rollout_event",
            [
                model,
                event.actor,
                event.action,
                state.canary_version,
                state.canary_percent,
                encode_detail(event.detail),
            ],
        )
        return dataclasses.replace(state, updated_at=updated_at)

    def rollout_events(self, model: str, limit: int = 20) -> list[dict]:
        """The model's last `limit` rollout events, newest first."""
        rows = self._read("read_rollout_events", [model, limit])
        return [
            {
                "at": datetime_from_uuid1(row.at).replace(tzinfo=UTC),
                "actor": row.actor,
                "action": row.action,
                "canary_version": row.canary_version,
                "canary_percent": row.canary_percent,
                "detail": json.loads(row.detail) if row.detail else None,
            }
            for row in rows
        ]

    def ping(self) -> bool:
        """True when Cassandra answers a query now (for /readyz)."""
        self._ensure_started()
        if not self._connected.wait(min(self.connect_timeout, 1.0)):
            return False
        try:
            return self._session.execute(self._prepared["ping"], timeout=2.0).one() is not None
        except Exception:
            return False

    # ------------------------------------------------------------------------------------------- metrics

    def spool_depth(self) -> int:
        """Predictions in the log not yet acknowledged by Cassandra (0 before first use)."""
        return self.pending()[0]

    def pending(self) -> tuple[int, int]:
        """(records, bytes) in the log not yet acknowledged by Cassandra ((0, 0) before first use)."""
        return self._log.pending() if self._process.started else (0, 0)

    def stats(self) -> dict[str, int]:
        """Counters since start (logged, shipped, refused, rejected) and what the log holds now
        (pending_records, pending_bytes)."""
        if not self._process.started:
            return {}
        records, size = self._log.pending()
        with self._lock:
            return {**self._counts, "pending_records": records, "pending_bytes": size}


def _groups(name: str, records: list[PredictionRecord]) -> list[list[PredictionRecord]]:
    """The rows for one table cut into requests of at most `_BATCH_ROWS[name]` rows: by-day batches never
    span two day partitions, by-id batches stay under Cassandra's batch-size warning."""
    size = _BATCH_ROWS[name]
    if name == "write_by_day":
        by_day: dict = {}
        for record in records:
            by_day.setdefault(buckets.day_of(record.id), []).append(record)
        return [run[i : i + size] for run in by_day.values() for i in range(0, len(run), size)]
    groups: list[list[PredictionRecord]] = []
    used = _BY_ID_BATCH_BYTES  # "full", so the first row opens a group
    for record in records:
        weight = _BY_ID_ROW_BYTES + len((record.filename or "").encode())
        if used + weight > _BY_ID_BATCH_BYTES or len(groups[-1]) >= size:
            groups.append([])
            used = 0
        groups[-1].append(record)
        used += weight
    return groups


def _record_from_row(row, input_image: bytes | None, label: int | None) -> PredictionRecord:
    return PredictionRecord(
        id=row.id,
        created_at=row.created_at,
        filename=row.filename,
        image_sha256=row.image_sha256,
        input_image=input_image or b"",
        digit=row.digit,
        probabilities=row.probabilities,
        model_name=row.model_name,
        model_version=row.model_version,
        preprocess_ms=row.preprocess_ms,
        model_ms=row.model_ms,
        total_ms=row.total_ms,
        client_addr=row.client_address,
        routing=row.routing,
        request_id=row.request_id,
        feedback_label=label,
    )


def _aware(moment: datetime | None) -> datetime | None:
    """The driver reads timestamps as naive UTC."""
    return None if moment is None else moment.replace(tzinfo=UTC)


def _changed_since(model: str, if_updated_at: datetime) -> Conflict:
    return Conflict(f"the rollout of {model!r} changed since {if_updated_at.isoformat()}: read it again")


def _rollout_values(state: RolloutState, updated_at: datetime) -> list:
    return [
        state.status,
        state.canary_version,
        state.stable_version,
        state.canary_percent,
        state.shadow,
        list(state.steps),
        state.step_index,
        state.step_seconds,
        state.step_started_at,
        state.lease_until,
        state.started_by,
        state.started_at,
        state.reason,
        updated_at,
    ]


def _rollout_from_row(row) -> RolloutState:
    return RolloutState(
        status=row.status,
        canary_version=row.canary_version,
        stable_version=row.stable_version,
        canary_percent=row.canary_percent,
        shadow=bool(row.shadow),
        steps=tuple(row.steps or ()),
        step_index=row.step_index or 0,
        step_seconds=row.step_seconds,
        step_started_at=_aware(row.step_started_at),
        lease_until=_aware(row.lease_until),
        started_by=row.started_by,
        started_at=_aware(row.started_at),
        reason=row.reason,
        updated_at=_aware(row.updated_at),
    )


def _decode_cursor(cursor: bytes | None) -> uuid.UUID | None:
    if not cursor:
        return None
    try:
        value = uuid.UUID(bytes=bytes(cursor))
    except (ValueError, TypeError):
        raise InvalidInput("not a cursor this API returned") from None
    if value.version != 1:
        raise InvalidInput("not a cursor this API returned")
    return value


def _describe(exc: BaseException) -> str:
    if isinstance(exc, NoHostAvailable) and exc.errors:
        exc = next(iter(exc.errors.values()))
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__

"""`PredictionStore`: the gateway's prediction log in Cassandra; writes never block a request for long.

Writes: `record()` queues the prediction and returns; a writer thread issues what has queued as asynchronous,
idempotent inserts (by day, by id), several rows per request when predictions arrive faster than one round
trip (small UNLOGGED batches, one day partition each for `predictions_by_day`), with a bounded number in
flight. The writer lingers `write_linger` seconds (default 50 ms) after the first record of a round so
that more join it: fewer, larger requests cost less CPU in the gateway and in Cassandra, and a lookup of a
prediction this process still holds (`get`, `add_feedback`, `recent`) sends it at once and waits for it.
Request threads never touch the driver (the costliest Python on the request path). When Cassandra
is unreachable, slow or failing, or too many writes are in flight, the record goes to the durable spool
instead (an fsynced append), and a background thread replays the spool, oldest first, once Cassandra
answers again; at start it also claims spool files left by processes that died. Nothing is dropped without
an ERROR log and a counter (`stats()["lost"]`, only when the spool itself cannot be written).

Everything that belongs to a process (driver threads, the spool file, the replay thread) is created on first
use, in the process that uses it: make the store before or after a server forks, never share a used one across
a fork."""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cassandra import DriverException
from cassandra.cluster import Cluster, NoHostAvailable, Session
from cassandra.query import BatchStatement, BatchType, PreparedStatement

from gateway.errors import Conflict, InvalidInput, NotFound, StoreUnavailable
from gateway.store import buckets
from gateway.store.cluster import Credentials, build_cluster, parse_hosts
from gateway.store.migrate import validate_keyspace
from gateway.store.records import PredictionRecord
from gateway.store.spool import Spool, SpoolError

log = logging.getLogger(__name__)

_COLUMNS = (
    "created_at, filename, image_sha256, digit, probabilities, model_name, model_version, "
    "preprocess_ms, model_ms, total_ms, client_address"
)
_STATEMENTS = {
    "write_by_day": f"INSERT INTO {{ks}}.predictions_by_day (day, id, {_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?",
    "write_by_id": f"INSERT INTO {{ks}}.predictions_by_id (id, input, {_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?",
    "read_day": f"SELECT id, {_COLUMNS} FROM {{ks}}.predictions_by_day WHERE day = ? LIMIT ?",
    "read_day_before": f"SELECT id, {_COLUMNS} FROM {{ks}}.predictions_by_day "
    "WHERE day = ? AND id < ? LIMIT ?",
    "read_id": f"SELECT id, input, {_COLUMNS} FROM {{ks}}.predictions_by_id WHERE id = ?",
    "read_labels": "SELECT id, label FROM {ks}.feedback_by_id WHERE id IN ?",
    # Lightweight transactions: the first label wins, and only an operator's correction replaces it.
    "write_feedback_first": "INSERT INTO {ks}.feedback_by_id (id, label, digit, input, model_name, "
    "model_version, predicted_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, toTimestamp(now())) IF NOT EXISTS",
    "correct_feedback": "UPDATE {ks}.feedback_by_id SET label = ?, updated_at = toTimestamp(now()) "
    "WHERE id = ? IF EXISTS",
    "ping": "SELECT release_version FROM system.local",
}
_IDEMPOTENT = {"write_by_day", "write_by_id"}
# Rows per write request. A by-day batch holds one partition (one mutation; Cassandra does not size-check it).
# A by-id batch spans partitions: Cassandra warns above 5 KiB (`batch_size_warn_threshold`), and a row weighs
# ~1,272 bytes plus its filename's UTF-8 (measured on Cassandra 5.0), so those batches are cut by size.
_BATCH_ROWS = {"write_by_day": 16, "write_by_id": 4}
_BY_ID_ROW_BYTES = 1300
_BY_ID_BATCH_BYTES = 4800
_DAYS_PER_ROUND = 8  # day partitions read concurrently while looking for a page of recent predictions
MAX_DAYS_PER_PAGE = 120  # day partitions one page may read (the default 90-day retention fits in one)
SCAN_SECONDS = 3.0  # after this, a page stops reading partitions and comes back short, with a cursor


@dataclass(frozen=True)
class Page:
    """Recent predictions, newest first; pass `cursor` back to get the next page (None: no more)."""

    items: list[PredictionRecord]
    cursor: bytes | None


@dataclass
class _Write:
    record: PredictionRecord
    remaining: int = 2
    error: BaseException | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


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
        replay_chunk: int = 64,
        max_backoff: float = 10.0,
        write_linger: float = 0.05,
    ) -> None:
        self.hosts = parse_hosts(hosts)
        self.port = int(port)
        self.keyspace = validate_keyspace(keyspace)
        self.spool_dir = Path(spool_dir)
        if ttl_seconds < 0:
            raise ValueError("ttl_seconds must be >= 0 (0: keep forever)")
        self.ttl_seconds = int(ttl_seconds)
        self.max_in_flight = max_in_flight
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.local_dc = local_dc
        self.credentials = credentials
        self.replay_chunk = replay_chunk
        self.max_backoff = max_backoff
        self.write_linger = write_linger
        self._pid: int | None = None
        self._start_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------- lifecycle

    def _ensure_started(self) -> None:
        if self._pid == os.getpid():
            return
        with self._start_lock:
            if self._pid == os.getpid():
                return
            # A fresh process (or the first use): nothing inherited from a parent is touched.
            self._lock = threading.Lock()
            self._idle = threading.Condition(self._lock)
            self._replay_lock = threading.Lock()
            self._wake = threading.Event()
            self._stopping = threading.Event()
            self._connected = threading.Event()
            self._cluster: Cluster | None = None
            self._session: Session | None = None
            self._prepared: dict[str, PreparedStatement] = {}
            self._spool = Spool(self.spool_dir)
            self._spooling = True  # until connected: records go to the spool
            self._in_flight = 0  # queued or being written
            self._pending: dict[uuid.UUID, PredictionRecord] = {}
            self._queue: list[PredictionRecord] = []
            self._queued = threading.Condition(self._lock)
            self._flush = threading.Event()  # cuts the writer's linger short
            self._draining = threading.Event()  # closing: no more lingering
            self._counts = {"written": 0, "spooled": 0, "replayed": 0, "lost": 0, "rejected": 0}
            self._last_problem = ""
            self._spool_writer = ThreadPoolExecutor(1, thread_name_prefix="store-spool")
            self._thread = threading.Thread(target=self._run, name="store-replay", daemon=True)
            self._writer = threading.Thread(target=self._write_queued, name="store-writer", daemon=True)
            self._pid = os.getpid()
            self._thread.start()
            self._writer.start()

    def close(self, timeout: float = 10.0) -> None:
        """Within `timeout`: let in-flight writes finish, spool what is left, and, when Cassandra answers,
        drain the spool so a clean shutdown leaves nothing behind; then stop threads and release the spool."""
        if self._pid != os.getpid():
            return
        deadline = time.monotonic() + timeout
        self._draining.set()  # the writer sends what is queued without lingering
        self._flush.set()
        with self._idle:
            while self._in_flight > 0 and time.monotonic() < deadline:
                self._idle.wait(max(deadline - time.monotonic(), 0.01))
            leftovers = list(self._pending.values())
            self._spooling = True
            self._queue.clear()  # not issued yet: spooled below with the other leftovers
            self._stopping.set()
            self._queued.notify()
        self._writer.join(max(deadline - time.monotonic(), 1.0))
        for record in leftovers:  # they may still land too: the writes are idempotent
            self._to_spool(record)
        self._spool_writer.shutdown(wait=True)
        self._wake.set()
        self._thread.join(max(deadline - time.monotonic(), 1.0))
        if self._session is not None and self._spool.depth() > 0 and time.monotonic() < deadline:
            self._replay(until=deadline)
        if self._cluster is not None:
            self._cluster.shutdown()
        self._spool.close()
        depth = sum(1 for _ in self.spool_dir.glob("spool-*.log")) if self.spool_dir.exists() else 0
        if leftovers or depth:
            log.info("store closed; %d spool file(s) left in %s for the next start", depth, self.spool_dir)
        self._pid = None

    # ------------------------------------------------------------------------------------------- writes

    def record(self, record: PredictionRecord) -> None:
        """Log one prediction. Returns at once: queued for the writer, or an fsynced spool append.
        Never raises."""
        self._ensure_started()
        with self._lock:
            direct = (
                not self._spooling and not self._draining.is_set() and self._in_flight < self.max_in_flight
            )
            if direct:
                self._in_flight += 1
                self._pending[record.id] = record
                self._queue.append(record)
                if len(self._queue) == 1:
                    self._queued.notify()
                elif len(self._queue) >= self.max_in_flight // 4:
                    self._flush.set()  # a burst: no point lingering, send now
        if not direct:
            self._to_spool(record)
            self._wake.set()

    def _write_queued(self) -> None:
        """The writer thread: issue whatever has queued since its last round, until the store closes."""
        while True:
            with self._lock:
                while not self._queue and not self._stopping.is_set():
                    self._queued.wait()
            if self.write_linger > 0 and not self._draining.is_set():
                self._flush.wait(self.write_linger)  # let more records join this round
                self._flush.clear()
            with self._lock:
                if self._stopping.is_set():
                    return
                records, self._queue = self._queue, []
            try:
                self._issue([_Write(record) for record in records])
            except Exception:  # a bug; the writer must live on, and these records must not vanish
                log.exception("the store's writer failed on %d record(s); spooling them", len(records))
                for record in records:
                    self._spool_writer.submit(self._spool_and_release, record)

    def _issue(self, writes: list[_Write]) -> None:
        """Two writes per record (by day, by id), grouped into small batches; each settles when answered."""
        plan = [(name, group) for name in ("write_by_day", "write_by_id") for group in _groups(name, writes)]
        for name, group in plan:
            try:
                if len(group) == 1:
                    statement = self._bind(name, group[0].record)
                else:
                    statement = BatchStatement(BatchType.UNLOGGED)
                    for write in group:
                        statement.add(self._bind(name, write.record))
                    statement.is_idempotent = True  # the same rows again: retrying is safe
                future = self._session.execute_async(statement)
            except Exception as exc:  # e.g. the session shut down under us
                self._settle_error(exc, group)
                continue
            future.add_callbacks(
                self._settle, self._settle_error, callback_args=(group,), errback_args=(group,)
            )

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
        ]
        key = (
            [buckets.day_of(record.id), record.id]
            if name == "write_by_day"
            else [record.id, record.input_image]
        )
        return self._prepared[name].bind([*key, *values, self.ttl_seconds])

    def _settle(self, _result: object, group: list[_Write]) -> None:
        for write in group:
            self._finish_part(write, None)

    def _settle_error(self, exc: BaseException, group: list[_Write]) -> None:
        for write in group:
            self._finish_part(write, exc)

    def _finish_part(self, write: _Write, exc: BaseException | None) -> None:
        with write.lock:
            write.remaining -= 1
            write.error = write.error or exc
            if write.remaining > 0:
                return
        if write.error is None:
            self._release(write.record, written=True)
            return
        self._problem(f"a write failed ({_describe(write.error)})")
        with self._lock:
            self._spooling = True
        # The driver's event loop calls us: fsync on another thread.
        self._spool_writer.submit(self._spool_and_release, write.record)

    def _spool_and_release(self, record: PredictionRecord) -> None:
        self._to_spool(record)
        self._release(record, written=False)
        self._wake.set()

    def _release(self, record: PredictionRecord, *, written: bool) -> None:
        with self._idle:
            self._in_flight -= 1
            self._pending.pop(record.id, None)
            if written:
                self._counts["written"] += 1
            self._idle.notify_all()

    def _to_spool(self, record: PredictionRecord) -> None:
        try:
            self._spool.append(record.to_json_bytes())
        except SpoolError as exc:
            with self._lock:
                self._counts["lost"] += 1
            log.error(
                "prediction %s LOST: Cassandra did not take it and the spool failed: %s", record.id, exc
            )
            return
        with self._lock:
            self._counts["spooled"] += 1

    # ------------------------------------------------------------------------------------------- replay

    def _run(self) -> None:
        backoff, last_scan = 0.2, 0.0
        while not self._stopping.is_set():
            if time.monotonic() - last_scan > 10.0:
                last_scan = time.monotonic()
                found = self._spool.claim_orphans()
                if found:
                    log.info("claimed %d spooled prediction(s) left by a stopped process", found)
            ok = (self._session is not None or self._connect()) and self._replay() is None
            if ok and self._spooling and self._spool.depth() == 0 and self.ping():
                with self._lock:
                    if self._spool.depth() == 0:
                        self._spooling = False
                        if self._last_problem:
                            log.warning("Cassandra is back; writing directly again")
                        self._last_problem = ""
            if ok:
                backoff = 0.2
                self._wake.wait(1.0)
            else:
                self._wake.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)
            self._wake.clear()

    def replay_spool(self) -> int:
        """Write spooled predictions to Cassandra now, oldest first; returns how many. Never raises."""
        self._ensure_started()
        before = self._counts["replayed"]
        if self._session is not None:
            self._replay()
        return self._counts["replayed"] - before

    def _replay(self, until: float | None = None) -> BaseException | None:
        """Replay until the spool is empty (None) or a write fails (the error; the records stay spooled).
        Runs until stopped, or with `until` (a monotonic deadline) until then: the last drain in `close()`."""
        with self._replay_lock:
            while time.monotonic() < until if until is not None else not self._stopping.is_set():
                batch = self._spool.peek(self.replay_chunk)
                if batch is None:
                    return None
                segment, payloads, end = batch
                futures = []
                for payload in payloads:
                    try:
                        record = PredictionRecord.from_json_bytes(payload)
                        futures += [
                            self._session.execute_async(self._bind(n, record))
                            for n in ("write_by_day", "write_by_id")
                        ]
                    except (ValueError, TypeError, KeyError) as exc:
                        self._reject(payload, exc)
                try:
                    for future in futures:
                        future.result()
                except Exception as exc:
                    self._problem(f"replaying the spool failed ({_describe(exc)})")
                    with self._lock:
                        self._spooling = True
                    return exc
                self._spool.commit(segment, end, len(payloads))
                with self._lock:
                    self._counts["replayed"] += len(futures) // 2
        return None

    def _reject(self, payload: bytes, exc: BaseException) -> None:
        """A spooled record that cannot be decoded (a bug, a format change): set aside loudly, not dropped."""
        rejected = Spool(self.spool_dir / "rejected")
        try:
            rejected.append(payload)
        finally:
            rejected.close()
        with self._lock:
            self._counts["rejected"] += 1
        log.error("a spooled record could not be decoded (%s); kept in %s", exc, self.spool_dir / "rejected")

    def _connect(self) -> bool:
        cluster = build_cluster(
            self.hosts,
            self.port,
            request_timeout=self.request_timeout,
            connect_timeout=self.connect_timeout,
            local_dc=self.local_dc,
            credentials=self.credentials,
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
            if self._spool.depth() == 0:  # nothing to replay first: write directly from now on
                self._spooling = False
        self._connected.set()
        return True

    def _problem(self, message: str) -> None:
        """Log a new kind of trouble once (at WARNING), not once per record."""
        if message != self._last_problem:
            self._last_problem = message
            log.warning("%s; predictions are spooled in %s until it works again", message, self.spool_dir)

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
        """Read your own writes: the predictions this process still holds (queued or in flight; `ids`, or
        all of them) are sent now and waited for until Cassandra has them or they went to the spool, so a
        lookup right after a predict (the web page's feedback and recent table) finds them."""
        if self._pid != os.getpid():
            return
        deadline = time.monotonic() + self.write_linger + self.request_timeout
        with self._idle:
            waiting = set(self._pending) if ids is None else set(ids) & set(self._pending)
            while waiting:
                self._flush.set()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._idle.wait(min(remaining, 0.05))  # and flush again: the writer may have just cleared it
                waiting &= set(self._pending)

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

    def add_feedback(self, prediction_id: uuid.UUID, label: int, *, correct: bool = False) -> None:
        """Record the true digit for a prediction. The first label wins (a lightweight transaction): the
        same label again is a no-op, a different one is a Conflict unless `correct` (an operator's fix)."""
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 9:
            raise InvalidInput("a label is an integer from 0 to 9")
        self._flush_pending([prediction_id])
        row = self._read("read_id", [prediction_id]).one()
        if row is None:
            raise NotFound("no prediction with this id")
        copied = [row.digit, row.input, row.model_name, row.model_version, row.created_at]
        first = self._read("write_feedback_first", [prediction_id, label, *copied])
        if first.was_applied or first.one().label == label:
            return
        if not correct:
            raise Conflict(
                f"this prediction already has feedback (label {first.one().label}); "
                "only an operator can change it"
            )
        self._read("correct_feedback", [label, prediction_id])

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
        """Predictions waiting in this process's spool files (0 before first use)."""
        return self._spool.depth() if self._pid == os.getpid() else 0

    def stats(self) -> dict[str, int]:
        """Counters since start (written, spooled, replayed, lost, rejected), in_flight and spool_depth."""
        if self._pid != os.getpid():
            return {}
        with self._lock:
            return {**self._counts, "in_flight": self._in_flight, "spool_depth": self._spool.depth()}


def _groups(name: str, writes: list[_Write]) -> list[list[_Write]]:
    """The writes for one table cut into requests of at most `_BATCH_ROWS[name]` rows: by-day batches never
    span two day partitions, by-id batches stay under Cassandra's batch-size warning."""
    size = _BATCH_ROWS[name]
    if name == "write_by_day":
        by_day: dict = {}
        for write in writes:
            by_day.setdefault(buckets.day_of(write.record.id), []).append(write)
        return [run[i : i + size] for run in by_day.values() for i in range(0, len(run), size)]
    groups: list[list[_Write]] = []
    used = _BY_ID_BATCH_BYTES  # "full", so the first row opens a group
    for write in writes:
        weight = _BY_ID_ROW_BYTES + len((write.record.filename or "").encode())
        if used + weight > _BY_ID_BATCH_BYTES or len(groups[-1]) >= size:
            groups.append([])
            used = 0
        groups[-1].append(write)
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
        feedback_label=label,
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

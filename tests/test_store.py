"""PredictionStore against the real Cassandra node: round trips, paging across days, logging and shipping."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from cassandra.util import uuid_from_time

from deploy.local.cassandra_node import free_port
from gateway.errors import InvalidInput, NotFound, StoreUnavailable
from gateway.store import PredictionRecord, PredictionStore
from gateway.store.buckets import day_of
from gateway.store.store import _BATCH_ROWS, _groups
from gateway.store.wal import scan_frames
from tests.fixtures.cassandra_node import qualified, wait_for_session

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_record(
    n: int = 0, *, when: datetime | None = None, filename: str | None = "digit.png"
) -> PredictionRecord:
    when = when or datetime.now(UTC)
    probabilities = [0.01] * 10
    probabilities[n % 10] = 0.91
    return PredictionRecord(
        id=uuid_from_time(when),
        created_at=when,
        filename=filename,
        image_sha256=hashlib.sha256(str(n).encode()).hexdigest(),
        input_image=bytes((n + i) % 256 for i in range(784)),
        digit=n % 10,
        probabilities=probabilities,
        model_name="mnist",
        model_version=1 + n % 3,
        preprocess_ms=1.5,
        model_ms=3.25,
        total_ms=5.0,
        client_addr="127.0.0.1",
    )


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def rows_by_id(session, keyspace, ids) -> set:
    select = session.prepare("SELECT id FROM " + qualified(keyspace, "predictions_by_id") + " WHERE id IN ?")
    found = set()
    for chunk in range(0, len(ids), 100):
        found |= {r.id for r in session.execute(select, [ids[chunk : chunk + 100]])}
    return found


@pytest.fixture
def store(cassandra_node, clean_tables, tmp_path):
    store = PredictionStore(
        [cassandra_node.host],
        cassandra_node.port,
        clean_tables,
        tmp_path / "spool",
        credentials=cassandra_node.credentials,
    )
    yield store
    store.close()


def settled(store: PredictionStore) -> bool:
    return store.stats()["pending_records"] == 0


def test_round_trip_keeps_every_field(store):
    record = make_record(7)
    store.record(record)
    assert wait_until(lambda: store.get(record.id) is not None)
    assert wait_until(lambda: settled(store))
    got = store.get(record.id)
    # Cassandra keeps milliseconds and float32: compare those two with their precision, the rest exactly.
    assert abs(got.created_at - record.created_at) < timedelta(milliseconds=1) and got.created_at.tzinfo
    assert got.probabilities == pytest.approx(record.probabilities, rel=1e-6)
    assert replace(got, created_at=record.created_at, probabilities=record.probabilities) == record
    assert got.input_image == record.input_image and len(got.input_image) == 784
    assert got.feedback_label is None
    assert store.get(uuid_from_time(datetime.now(UTC))) is None
    assert store.ping() is True


@pytest.mark.parametrize(
    "filename",
    [
        'it\'s "quoted".png',
        "числа 数字 🖼️.png",
        "x'); DROP TABLE predictions_by_id; --.png",
        "../../etc/passwd",
        "a" * 500,
        None,
    ],
)
def test_filenames_are_stored_verbatim(store, filename):
    record = make_record(3, filename=filename)
    store.record(record)
    assert wait_until(lambda: store.get(record.id) is not None)
    assert store.get(record.id).filename == filename
    assert store.recent(1).items[0].filename == filename


def test_recent_is_newest_first_across_days_with_a_cursor(store):
    # Noon yesterday: minutes before it never cross midnight, whenever the test runs.
    now = (datetime.now(UTC) - timedelta(days=1)).replace(hour=12, minute=0, second=0, microsecond=0)
    moments = [now - timedelta(days=d, minutes=m) for d in (0, 1, 3) for m in (1, 2, 3)]
    records = [make_record(i, when=t) for i, t in enumerate(moments)]
    assert len({day_of(r.id) for r in records}) == 3
    for r in records:
        store.record(r)
    assert wait_until(lambda: settled(store))
    expected = [r.id for r in sorted(records, key=lambda r: r.created_at, reverse=True)]

    seen, cursor = [], None
    while True:
        page = store.recent(4, cursor)
        seen += [item.id for item in page.items]
        assert all(item.input_image == b"" for item in page.items)  # lists leave the input out
        cursor = page.cursor
        if cursor is None:
            break
    assert seen == expected
    assert [i.id for i in store.recent(100).items] == expected  # one page, no cursor
    assert store.recent(100).cursor is None


def test_feedback_is_checked_and_read_back(store):
    record = make_record(2)
    store.record(record)
    assert wait_until(lambda: settled(store) and store.get(record.id) is not None)
    store.add_feedback(record.id, 5)
    store.add_feedback(record.id, 4, correct=True)  # an operator's correction replaces the first label
    assert store.get(record.id).feedback_label == 4
    assert store.recent(1).items[0].feedback_label == 4
    for bad in (-1, 10, True, "3", 3.0):
        with pytest.raises(InvalidInput):
            store.add_feedback(record.id, bad)
    with pytest.raises(NotFound):
        store.add_feedback(uuid_from_time(datetime.now(UTC)), 1)


def test_bad_cursors_and_limits_are_client_errors(store):
    for cursor in (b"short", uuid.uuid4().bytes):
        with pytest.raises(InvalidInput):
            store.recent(10, cursor)
    with pytest.raises(InvalidInput):
        store.recent(0)


def test_same_id_twice_lands_in_the_same_rows(store, cassandra_session, clean_tables):
    record = make_record(1)
    store.record(record)
    store.record(record)
    assert wait_until(lambda: settled(store))
    rows = list(
        cassandra_session.execute(
            "SELECT id FROM " + qualified(clean_tables, "predictions_by_day") + " WHERE day = %s",
            (day_of(record.id),),
        )
    )
    assert [r.id for r in rows] == [record.id]


def test_cassandra_down_logs_and_reads_fail_cleanly(tmp_path):
    store = PredictionStore(["127.0.0.1"], free_port(), "mnist_test", tmp_path / "spool", connect_timeout=0.5)
    try:
        records = [make_record(i) for i in range(5)]
        started = time.perf_counter()
        for r in records:
            store.record(r)
        assert time.perf_counter() - started < 5  # a handful of fsyncs, no network wait
        assert store.stats()["pending_bytes"] > 5 * 784
        assert store.spool_depth() == 5
        assert store.ping() is False
        with pytest.raises(StoreUnavailable):
            store.get(records[0].id)
        with pytest.raises(StoreUnavailable):
            store.recent(10)
    finally:
        store.close(timeout=2)
    assert len(list((tmp_path / "spool").glob("wal-*.log"))) == 1  # kept for the next process


SPOOLING_CHILD = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {repo!r})
    from tests.test_store import make_record
    from gateway.store import PredictionStore
    store = PredictionStore(["127.0.0.1"], {port}, {keyspace!r}, {spool!r}, connect_timeout=0.5)
    ids = []
    for i in range({count}):
        record = make_record(i)
        store.record(record)
        ids.append(str(record.id))
    assert store.spool_depth() == {count}, store.stats()
    print(json.dumps(ids))
""")


def test_a_new_process_replays_the_spool_a_dead_one_left(
    cassandra_node, clean_tables, cassandra_session, tmp_path
):
    spool_dir = tmp_path / "spool"
    child = SPOOLING_CHILD.format(
        repo=REPO, port=free_port(), keyspace=clean_tables, spool=str(spool_dir), count=40
    )
    # The child records while Cassandra is unreachable for it, then exits without closing the store.
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    ids = [uuid.UUID(i) for i in json.loads(result.stdout)]
    assert len(list(spool_dir.glob("wal-*.log"))) == 1

    store = PredictionStore(
        [cassandra_node.host],
        cassandra_node.port,
        clean_tables,
        spool_dir,
        credentials=cassandra_node.credentials,
    )
    try:
        store.ping()  # starts the store: it claims the orphaned file and replays it
        assert wait_until(lambda: rows_by_id(cassandra_session, clean_tables, ids) == set(ids))
        assert wait_until(lambda: store.spool_depth() == 0)
        assert [i.id for i in store.recent(100).items] == sorted(ids, key=lambda u: u.time, reverse=True)
    finally:
        store.close()
    assert list(spool_dir.glob("wal-*.log")) == []


def test_every_record_arrives_when_the_node_is_killed_mid_stream(
    cassandra_node, clean_tables, cassandra_session, tmp_path
):
    store = PredictionStore(
        [cassandra_node.host],
        cassandra_node.port,
        clean_tables,
        tmp_path / "spool",
        request_timeout=2.0,
        max_backoff=1.0,
        credentials=cassandra_node.credentials,
    )
    ids: list[uuid.UUID] = []
    stop = threading.Event()

    def stream() -> None:
        n = 0
        while not stop.is_set():
            record = make_record(n)
            store.record(record)
            ids.append(record.id)
            n += 1
            time.sleep(0.005)

    writer = threading.Thread(target=stream)
    try:
        assert wait_until(store.ping, timeout=30)
        writer.start()
        assert wait_until(lambda: store.stats()["shipped"] >= 100)
        cassandra_node.kill()
        shipped = store.stats()["shipped"]
        assert wait_until(lambda: store.spool_depth() > 200, timeout=30)  # the log holds what cannot go
    finally:
        cassandra_node.start()
        wait_for_session(cassandra_session)
    assert wait_until(lambda: store.stats()["shipped"] > shipped + 200, timeout=90)  # shipping resumes
    stop.set()
    writer.join()
    assert wait_until(lambda: settled(store), timeout=90)
    stats = store.stats()
    store.close()
    assert stats["refused"] == 0 and stats["rejected"] == 0
    assert stats["shipped"] >= len(ids) == stats["logged"]
    assert rows_by_id(cassandra_session, clean_tables, ids) == set(ids)


@pytest.mark.parametrize("linger", [0.05, 30.0])
def test_close_flushes_in_flight_writes(cassandra_node, clean_tables, cassandra_session, tmp_path, linger):
    store = PredictionStore(
        [cassandra_node.host],
        cassandra_node.port,
        clean_tables,
        tmp_path / "spool",
        write_linger=linger,
        credentials=cassandra_node.credentials,
    )
    assert wait_until(store.ping, timeout=30)
    records = [make_record(i) for i in range(300)]
    for r in records:
        store.record(r)  # no waiting: most are still queued or in flight when close() starts
    started = time.monotonic()
    store.close(timeout=30)
    assert time.monotonic() - started < 20  # a long linger does not hold the shutdown back
    ids = [r.id for r in records]
    assert rows_by_id(cassandra_session, clean_tables, ids) == set(ids)
    assert list((tmp_path / "spool").glob("wal-*.log")) == []  # nothing left over


def test_a_burst_from_many_threads_is_written_whole(store, cassandra_session, clean_tables):
    """Records arriving faster than a round trip go out several per request (batches never span two day
    partitions); every row must still land in both tables with its own values, and Cassandra must not
    warn about the batches (size or partition count), even with the longest filenames."""
    now = datetime.now(UTC)
    names = ["d.png", "数" * 255, "x" * 255, None]
    records = [
        make_record(i, when=now - timedelta(days=i % 2, microseconds=i), filename=names[i % 4])
        for i in range(240)
    ]
    assert wait_until(store.ping, timeout=30)
    futures, execute_async = [], store._session.execute_async

    def spy(*args, **kwargs):
        futures.append(execute_async(*args, **kwargs))
        return futures[-1]

    store._session.execute_async = spy
    chunks = [records[i::8] for i in range(8)]
    threads = [threading.Thread(target=lambda c=c: [store.record(r) for r in c]) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wait_until(lambda: settled(store))
    assert store.stats()["shipped"] == len(records)
    assert len(futures) < len(records)  # batched: fewer requests than rows (2 rows per record)
    assert [f.warnings for f in futures if f.warnings] == []
    ids = [r.id for r in records]
    assert rows_by_id(cassandra_session, clean_tables, ids) == set(ids)
    by_day = cassandra_session.prepare(
        "SELECT id, digit, image_sha256 FROM "
        + qualified(clean_tables, "predictions_by_day")
        + " WHERE day = ?"
    )
    stored = {}
    for day in {day_of(r.id) for r in records}:
        stored |= {
            row.id: (row.digit, row.image_sha256, day) for row in cassandra_session.execute(by_day, [day])
        }
    assert stored == {r.id: (r.digit, r.image_sha256, day_of(r.id)) for r in records}
    for r in records[::47]:  # the by-id rows carry each record's own input
        assert store.get(r.id).input_image == r.input_image


def test_write_groups_stay_small_and_within_one_day():
    now = datetime.now(UTC)
    writes = [make_record(i, when=now - timedelta(days=i % 3, microseconds=i)) for i in range(50)]
    by_day = _groups("write_by_day", writes)
    assert sorted(w.id for g in by_day for w in g) == sorted(w.id for w in writes)
    assert all(len({day_of(w.id) for w in g}) == 1 for g in by_day)
    assert max(len(g) for g in by_day) == _BATCH_ROWS["write_by_day"]
    by_id = _groups("write_by_id", writes)
    assert [w for g in by_id for w in g] == writes
    assert max(len(g) for g in by_id) == 3  # short names: three ~1.3 KB rows fit under the 5 KiB warning
    assert _groups("write_by_id", writes[:1]) == [writes[:1]]
    long_names = [make_record(i, filename="数" * 255) for i in range(10)]
    assert {len(g) for g in _groups("write_by_id", long_names)} == {2}  # ~2 KB each


def test_reads_right_after_a_write_see_it_despite_the_linger(cassandra_node, clean_tables, tmp_path):
    """The shipper lingers up to `write_linger` for company; a lookup of a record still held ships it now."""
    store = PredictionStore(
        [cassandra_node.host],
        cassandra_node.port,
        clean_tables,
        tmp_path / "spool",
        write_linger=30.0,
        credentials=cassandra_node.credentials,
    )
    try:
        assert wait_until(store.ping, timeout=30)
        first, second = make_record(1), make_record(2)
        store.record(first)
        started = time.monotonic()
        assert store.get(first.id).input_image == first.input_image
        store.record(second)
        store.add_feedback(second.id, 3)  # needs the prediction in Cassandra
        assert store.get(second.id).feedback_label == 3
        assert [item.id for item in store.recent(5).items] == [second.id, first.id]
        assert time.monotonic() - started < 10  # far below the 30 s linger
        assert settled(store)
    finally:
        store.close()


def test_a_refused_login_is_reported_with_the_reason(cassandra_node, clean_tables, tmp_path, caplog):
    """Cassandra requires a login: a store with a wrong password says why it cannot connect (and logs)."""
    from gateway.store.cluster import Credentials

    caplog.set_level("WARNING", logger="gateway.store.store")
    store = PredictionStore(
        [cassandra_node.host],
        cassandra_node.port,
        clean_tables,
        tmp_path / "spool",
        credentials=Credentials(cassandra_node.credentials.username, "wrong"),
    )
    try:
        store.record(make_record(1))
        assert wait_until(
            lambda: any("AuthenticationFailed" in r.getMessage() for r in caplog.records), timeout=30
        ), [r.getMessage() for r in caplog.records]
        assert any("Bad credentials" in r.getMessage() for r in caplog.records)
        assert wait_until(lambda: store.spool_depth() == 1)
    finally:
        store.close()


def test_a_full_log_refuses_new_predictions_and_keeps_the_logged_ones(tmp_path):
    """The cap: records up to `max_log_bytes` are logged; the next one is refused with a 503-class error
    (its id must not be handed out) and counted; nothing logged is dropped."""
    frame = len(make_record(0).to_json_bytes()) + 10  # the frame header
    store = PredictionStore(
        ["127.0.0.1"],
        free_port(),
        "mnist_test",
        tmp_path / "log",
        connect_timeout=0.5,
        max_log_bytes=5 * frame,
    )
    try:
        for n in range(5):
            store.record(make_record(n))  # just under and at the cap
        with pytest.raises(StoreUnavailable, match="log is full"):
            store.record(make_record(5))
        stats = store.stats()
        assert (stats["logged"], stats["refused"], stats["pending_records"]) == (5, 1, 5)
        assert stats["pending_bytes"] == 5 * frame
    finally:
        store.close(timeout=2)


def test_a_record_cassandra_can_never_take_is_set_aside_and_the_rest_ship(
    store, cassandra_session, clean_tables
):
    unwritable = replace(make_record(1), model_version=2**64)  # beyond CQL `bigint`
    good = make_record(2)
    store.record(unwritable)
    store.record(good)
    assert wait_until(lambda: settled(store), timeout=30), "a record that can never be written blocks the log"
    assert rows_by_id(cassandra_session, clean_tables, [good.id, unwritable.id]) == {good.id}
    assert store.stats()["rejected"] == 1
    payloads, _ = scan_frames((store.spool_dir / "rejected" / f"rejected-{os.getpid()}.log").read_bytes())
    assert [PredictionRecord.from_json_bytes(p).id for p in payloads] == [unwritable.id]

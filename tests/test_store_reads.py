"""What a stranger controls in reads and feedback, against the real Cassandra node: cursors from the future
or the far past, scans over years of empty day partitions, and who may change a prediction's label."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from cassandra.util import uuid_from_time

from gateway.errors import Conflict, NotFound, StoreUnavailable
from gateway.store import PredictionStore, buckets
from gateway.store.store import MAX_DAYS_PER_PAGE
from tests.test_store import make_record, settled, wait_until


@pytest.fixture
def make_store(cassandra_node, clean_tables, tmp_path):
    stores = []

    def make(**options) -> PredictionStore:
        store = PredictionStore(
            [cassandra_node.host],
            cassandra_node.port,
            clean_tables,
            tmp_path / f"spool{len(stores)}",
            credentials=cassandra_node.credentials,
            **options,
        )
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def test_a_cursor_from_the_future_is_clamped_to_now():
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    far = uuid_from_time(datetime(4000, 1, 1, tzinfo=UTC))
    assert buckets.scan_window(now, 90, far) == buckets.scan_window(now, 90, None)
    assert buckets.scan_window(now, 90, None)[0] == date(2026, 12, 1)
    near = uuid_from_time(now - timedelta(days=3))
    assert buckets.scan_window(now, 90, near)[0] == date(2026, 11, 27)


def test_a_day_cursor_sorts_below_every_prediction_of_its_day():
    day = date(2026, 11, 30)
    cursor = buckets.start_of_day_cursor(day)
    assert cursor.version == 1 and buckets.day_of(cursor) == day
    assert buckets.uuid_time(cursor) == datetime(2026, 11, 30, tzinfo=UTC)


def all_pages(store: PredictionStore, cursor: bytes | None) -> list[uuid.UUID]:
    """Every id from `cursor` on (a page may come back short, with a cursor, when its scan runs out of time
    on a busy machine)."""
    ids = []
    while True:
        page = store.recent(10, cursor)
        ids += [r.id for r in page.items]
        if page.cursor is None:
            return ids
        cursor = page.cursor


@pytest.mark.timeout(120)
def test_a_far_future_cursor_answers_the_first_page_at_once(make_store):
    store = make_store()
    records = [make_record(i, when=datetime.now(UTC) - timedelta(minutes=i)) for i in range(3)]
    for record in records:
        store.record(record)
    assert wait_until(lambda: settled(store))
    assert all_pages(store, None) == [r.id for r in records]
    for when in (datetime(4000, 1, 1, tzinfo=UTC), datetime.now(UTC) + timedelta(days=30)):
        assert all_pages(store, uuid_from_time(when).bytes) == [r.id for r in records]
    ancient = store.recent(10, uuid_from_time(datetime(1600, 1, 1, tzinfo=UTC)).bytes)
    assert ancient.items == [] and ancient.cursor is None


@pytest.mark.timeout(300)
def test_a_scan_reads_a_bounded_number_of_partitions_and_continues_with_a_cursor(make_store):
    """With no expiry (ten years of day partitions to look at) and one prediction 300 days old, the first
    page stops after MAX_DAYS_PER_PAGE partitions and says where to continue; following the cursors finds
    the prediction, then ends."""
    store = make_store(ttl_seconds=0)
    old = make_record(1, when=datetime.now(UTC) - timedelta(days=300))
    store.record(old)
    assert wait_until(lambda: settled(store))
    pages, cursor, found = 0, None, []
    newest = datetime.now(UTC).date() + timedelta(days=1)
    while True:
        page = store.recent(5, cursor)
        pages += 1
        found += [r.id for r in page.items]
        if page.cursor is None:
            break
        cursor = page.cursor
        resumes_at = buckets.day_of(uuid.UUID(bytes=cursor))
        # Each page read at most MAX_DAYS_PER_PAGE partitions (the one it resumes at included) and moved on.
        assert newest - timedelta(days=MAX_DAYS_PER_PAGE) < resumes_at < newest
        newest = resumes_at
    assert found == [old.id]
    assert pages > 3660 // MAX_DAYS_PER_PAGE  # ten years of partitions: never in one unbounded scan


def test_the_first_feedback_label_wins_and_only_a_correction_replaces_it(make_store, cassandra_session):
    store = make_store()
    record = make_record(2)
    store.record(record)
    assert wait_until(lambda: settled(store) and store.get(record.id) is not None)
    store.add_feedback(record.id, 3)
    store.add_feedback(record.id, 3)  # the same label again: accepted, nothing changes
    with pytest.raises(Conflict, match="label 3"):
        store.add_feedback(record.id, 5)
    assert store.get(record.id).feedback_label == 3
    store.add_feedback(record.id, 5, correct=True)
    assert store.get(record.id).feedback_label == 5
    with pytest.raises(NotFound):
        store.add_feedback(uuid_from_time(datetime.now(UTC)), 1, correct=True)


def test_concurrent_first_labels_leave_exactly_one_winner(make_store):
    """Many callers racing to label one prediction: the lightweight transaction lets exactly one win."""
    store = make_store()
    record = make_record(4)
    store.record(record)
    assert wait_until(lambda: settled(store) and store.get(record.id) is not None)
    outcomes: list = []

    def label(value: int) -> None:
        # Under contention Cassandra may time a transaction out (503 for a client, whether or not it applied);
        # the client retries, as a client of the API would: its own label again is accepted, another is not.
        for _ in range(5):
            try:
                store.add_feedback(record.id, value)
                outcomes.append(value)
                return
            except Conflict:
                outcomes.append("conflict")
                return
            except StoreUnavailable:
                continue

    threads = [threading.Thread(target=label, args=(value,)) for value in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    winners = [o for o in outcomes if o != "conflict"]
    assert len(outcomes) == 8 and len(winners) == 1
    assert store.get(record.id).feedback_label == winners[0]

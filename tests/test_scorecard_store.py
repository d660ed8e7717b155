"""The scorecard's reads and the feedback counters on the real Cassandra node: `version_stats` read per
(version, day) across a day boundary, and feedback labels counted once at the prediction's minute (a repeat
or a refused conflict counts nothing, an operator's correction moves the counts)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest

from gateway.errors import Conflict, InvalidInput
from gateway.store import PredictionStore, stats
from tests.fixtures.cassandra_node import qualified
from tests.test_store import make_record
from tests.waiting import eventually


@pytest.fixture
def store(cassandra_node, cassandra_keyspace, tmp_path):
    store = PredictionStore(
        [cassandra_node.host],
        cassandra_node.port,
        cassandra_keyspace,
        tmp_path / "spool",
        credentials=cassandra_node.credentials,
    )
    yield store
    store.close()


@pytest.fixture
def model() -> str:
    """A model name of this test alone: counters are partitioned by it, so tests need no truncation."""
    return f"m{uuid.uuid4().hex[:12]}"


def counters(session, keyspace: str, model: str, version: int, day: date) -> dict[tuple[datetime, str], int]:
    rows = session.execute(
        f"SELECT minute, metric, value FROM {qualified(keyspace, 'version_stats')} "
        "WHERE model_name = %s AND model_version = %s AND day = %s",
        [model, version, day],
    )
    return {(r.minute.replace(tzinfo=UTC), r.metric): r.value for r in rows if r.value}


def feedback_counters(*args) -> dict[tuple[datetime, str], int]:
    """The feedback counters only (the shipper counts the predictions themselves in the same partition)."""
    feedback = (stats.LABELS, stats.CORRECT, "confusion:")
    return {key: n for key, n in counters(*args).items() if key[1].startswith(feedback)}


def add(session, keyspace: str, model: str, version: int, minute: datetime, metric: str, n: int) -> None:
    session.execute(
        f"UPDATE {qualified(keyspace, 'version_stats')} SET value = value + %s "
        "WHERE model_name = %s AND model_version = %s AND day = %s AND minute = %s AND metric = %s",
        [n, model, version, stats.day_of(minute), minute, metric],
    )


def test_counters_are_read_per_version_and_day_across_midnight(
    store, cassandra_session, cassandra_keyspace, model
):
    before, after = datetime(2026, 11, 29, 23, 59, tzinfo=UTC), datetime(2026, 11, 30, 0, 0, tzinfo=UTC)
    outside = datetime(2026, 11, 29, 23, 57, tzinfo=UTC)
    for version, n in ((1, 3), (2, 5)):
        add(cassandra_session, cassandra_keyspace, model, version, before, stats.REQUESTS, n)
        add(cassandra_session, cassandra_keyspace, model, version, after, stats.REQUESTS, 10 * n)
        add(cassandra_session, cassandra_keyspace, model, version, outside, stats.REQUESTS, 1000)
    add(cassandra_session, cassandra_keyspace, "other-model", 1, after, stats.REQUESTS, 7)

    rows = store.version_stats(model, [1, 2, 3], datetime(2026, 11, 29, 23, 58, tzinfo=UTC), after)
    assert set(rows) == {1, 2, 3}
    assert sorted((m.replace(tzinfo=UTC), metric, v) for m, metric, v in rows[1]) == [
        (before, stats.REQUESTS, 3),
        (after, stats.REQUESTS, 30),
    ]
    assert sum(v for _, _, v in rows[2]) == 55
    assert rows[3] == []


def test_reads_are_bounded(store, model):
    start = datetime(2026, 11, 1, tzinfo=UTC)
    with pytest.raises(InvalidInput):
        store.version_stats(model, list(range(1, 18)), start, start)
    with pytest.raises(InvalidInput):  # more than 8 day partitions
        store.version_stats(model, [1], start, start + timedelta(days=8))
    store.version_stats(model, list(range(1, 17)), start, start + timedelta(days=7))


def recorded(store: PredictionStore, model: str, *, digit: int, version: int, when: datetime):
    record = replace(make_record(digit, when=when), model_name=model, model_version=version)
    store.record(record)
    eventually(lambda: store.get(record.id), what="the prediction in Cassandra")
    return record


def test_feedback_counts_once_at_the_predictions_minute(store, cassandra_session, cassandra_keyspace, model):
    when = datetime.now(UTC) - timedelta(minutes=3)
    minute, day = stats.minute_of(when), stats.day_of(stats.minute_of(when))
    right = recorded(store, model, digit=7, version=4, when=when)
    wrong = recorded(store, model, digit=3, version=4, when=when)

    first = store.add_feedback(right.id, 7)
    assert (first.change, first.model_version, first.predicted, first.label) == ("first", 4, 7, 7)
    assert store.add_feedback(wrong.id, 8).change == "first"
    # The same label again, and a different one refused (409): nothing more is counted.
    assert store.add_feedback(right.id, 7).change == "same"
    with pytest.raises(Conflict):
        store.add_feedback(wrong.id, 5)
    assert feedback_counters(cassandra_session, cassandra_keyspace, model, 4, day) == {
        (minute, stats.LABELS): 2,
        (minute, stats.CORRECT): 1,
        (minute, stats.confusion(7, 7)): 1,
        (minute, stats.confusion(8, 3)): 1,
    }

    # An operator corrects the wrong one to its digit (3): the label moves from 8 to 3, and is now correct.
    fixed = store.add_feedback(wrong.id, 3, correct=True)
    assert (fixed.change, fixed.previous) == ("corrected", 8)
    assert store.add_feedback(wrong.id, 3, correct=True).change == "same"
    assert feedback_counters(cassandra_session, cassandra_keyspace, model, 4, day) == {
        (minute, stats.LABELS): 2,
        (minute, stats.CORRECT): 2,
        (minute, stats.confusion(7, 7)): 1,
        (minute, stats.confusion(3, 3)): 1,
    }
    # ... and back to a wrong label: correct drops again.
    store.add_feedback(wrong.id, 9, correct=True)
    assert feedback_counters(cassandra_session, cassandra_keyspace, model, 4, day) == {
        (minute, stats.LABELS): 2,
        (minute, stats.CORRECT): 1,
        (minute, stats.confusion(7, 7)): 1,
        (minute, stats.confusion(9, 3)): 1,
    }
    assert store.get(wrong.id).feedback_label == 9


def test_feedback_on_a_prediction_from_yesterday_counts_in_yesterdays_partition(
    store, cassandra_session, cassandra_keyspace, model
):
    when = datetime.now(UTC) - timedelta(days=1)
    record = recorded(store, model, digit=2, version=9, when=when)
    store.add_feedback(record.id, 2)
    minute = stats.minute_of(when)
    assert feedback_counters(cassandra_session, cassandra_keyspace, model, 9, stats.day_of(minute)) == {
        (minute, stats.LABELS): 1,
        (minute, stats.CORRECT): 1,
        (minute, stats.confusion(2, 2)): 1,
    }

"""Which day partitions hold which predictions: pure functions, so paging is tested without Cassandra.

A prediction lives in the partition of the UTC day of its time UUID. "Recent, newest first" walks days
backwards from today (or from the day of the page cursor) down to the oldest day that can still hold live
rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

from cassandra.util import min_uuid_from_time

# 100-ns intervals between the UUID epoch (1582-10-15) and the Unix epoch.
_UUID_EPOCH_OFFSET = 0x01B21DD213814000


def uuid_time(value: uuid.UUID) -> datetime:
    """The UTC time carried by a version-1 UUID."""
    if value.version != 1:
        raise ValueError("not a time (version 1) UUID")
    micros = (value.time - _UUID_EPOCH_OFFSET) // 10
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)


def day_of(value: uuid.UUID | datetime) -> date:
    moment = uuid_time(value) if isinstance(value, uuid.UUID) else value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).date()


def days_newest_first(start: date, oldest: date) -> Iterator[date]:
    """`start`, the day before, ... down to `oldest` (inclusive); nothing when `oldest` is after `start`."""
    day = start
    while day >= oldest:
        yield day
        day -= timedelta(days=1)


def scan_window(now: datetime, retention_days: int, cursor_id: uuid.UUID | None = None) -> tuple[date, date]:
    """(first day to read, oldest day to read) for a page: from the cursor's day (or today, plus one day of
    clock skew between hosts; a cursor from the future is clamped to that) back to the oldest day whose
    rows have not expired."""
    today = day_of(now)
    latest = today + timedelta(days=1)
    start = min(day_of(cursor_id), latest) if cursor_id is not None else latest
    return start, today - timedelta(days=max(retention_days, 0))


def start_of_day_cursor(day: date) -> uuid.UUID:
    """The smallest time UUID of `day`: as a cursor, it continues a scan with the day before (every
    prediction of `day` sorts after it)."""
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return min_uuid_from_time(midnight)

"""The spool and the day-bucket logic on their own (no Cassandra needed)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from cassandra.util import datetime_from_uuid1, uuid_from_time

from gateway.store import buckets
from gateway.store.spool import HEADER, Spool, encode_frame, scan_frames


def drain(spool: Spool) -> list[bytes]:
    out = []
    while (batch := spool.peek(3)) is not None:
        segment, payloads, end = batch
        out += payloads
        spool.commit(segment, end, len(payloads))
    return out


def test_records_come_back_in_append_order_and_the_file_empties(tmp_path):
    spool = Spool(tmp_path)
    payloads = [f"record {i}".encode() for i in range(10)]
    for p in payloads:
        spool.append(p)
    assert spool.depth() == 10
    assert drain(spool) == payloads
    assert spool.depth() == 0
    spool.append(b"after truncation")
    assert drain(spool) == [b"after truncation"]
    spool.close()
    assert list(tmp_path.glob("spool-*")) == []  # an empty own file is removed on close


def test_a_live_owner_keeps_its_file_and_a_dead_ones_file_is_claimed(tmp_path):
    owner = Spool(tmp_path)
    owner.append(b"one")
    owner.append(b"two")
    other = Spool(tmp_path)
    assert other.claim_orphans() == 0  # the owner still holds the lock
    owner_file = next(tmp_path.glob("spool-*.log"))
    owner._own and __import__("os").close(owner._own.fd)  # the owner dies: its lock goes with its descriptor
    owner._own = None
    assert other.claim_orphans() == 2
    assert drain(other) == [b"one", b"two"]
    assert not owner_file.exists()  # a replayed orphan is removed


def test_a_torn_tail_is_detected_and_set_aside_not_replayed(tmp_path):
    good = [b"a" * 10, b"b" * 20]
    path = tmp_path / "spool-00000000000000000001-1.log"
    frame = encode_frame(b"c" * 30)
    path.write_bytes(encode_frame(good[0]) + encode_frame(good[1]) + frame[: HEADER.size + 7])
    spool = Spool(tmp_path)
    assert spool.claim_orphans() == 2
    assert drain(spool) == good
    assert (tmp_path / (path.name + ".corrupt")).read_bytes() == frame[: HEADER.size + 7]
    assert spool.corrupt_files == 1


def test_a_flipped_bit_stops_the_scan_at_the_damaged_frame():
    data = bytearray(encode_frame(b"first") + encode_frame(b"second") + encode_frame(b"third"))
    data[len(encode_frame(b"first")) + HEADER.size + 2] ^= 0x01
    payloads, intact = scan_frames(bytes(data))
    assert payloads == [b"first"] and intact == len(encode_frame(b"first"))


def test_uuid_time_matches_the_driver():
    moment = datetime(2026, 3, 1, 23, 59, 59, 999_000, tzinfo=UTC)
    value = uuid_from_time(moment)
    assert buckets.uuid_time(value).replace(tzinfo=None) == datetime_from_uuid1(value)
    assert buckets.day_of(value) == date(2026, 3, 1)
    with pytest.raises(ValueError):
        buckets.uuid_time(uuid.uuid4())


def test_days_are_walked_newest_first_and_inclusive():
    assert list(buckets.days_newest_first(date(2026, 3, 2), date(2026, 2, 27))) == [
        date(2026, 3, 2),
        date(2026, 3, 1),
        date(2026, 2, 28),
        date(2026, 2, 27),
    ]
    assert list(buckets.days_newest_first(date(2026, 3, 1), date(2026, 3, 2))) == []


def test_scan_window_starts_at_the_cursor_day_or_tomorrow_and_ends_at_retention():
    now = datetime(2026, 3, 10, 12, tzinfo=UTC)
    assert buckets.scan_window(now, 90) == (date(2026, 3, 11), date(2026, 3, 10) - timedelta(days=90))
    cursor = uuid_from_time(datetime(2026, 3, 5, 0, 0, 1, tzinfo=UTC))
    assert buckets.scan_window(now, 7, cursor) == (date(2026, 3, 5), date(2026, 3, 3))

"""The write-ahead log and the day-bucket logic on their own (no Cassandra needed)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from cassandra.util import datetime_from_uuid1, uuid_from_time

from gateway.store import buckets
from gateway.store.wal import HEADER, LogError, LogFull, WriteAheadLog, encode_frame, scan_frames

REPO = Path(__file__).resolve().parents[1]


def drain(wal: WriteAheadLog, limit: int = 3) -> list[bytes]:
    out = []
    while (batch := wal.read(limit)) is not None:
        out += batch.payloads
        wal.commit(batch)
    return out


def files(directory: Path) -> list[Path]:
    return sorted(directory.glob("wal-*.log"))


def test_records_come_back_in_append_order_and_are_trimmed(tmp_path):
    wal = WriteAheadLog(tmp_path)
    payloads = [f"record {i}".encode() for i in range(10)]
    for p in payloads:
        wal.append(p)
    assert wal.pending() == (10, sum(len(encode_frame(p)) for p in payloads))
    assert drain(wal) == payloads
    assert wal.pending() == (0, 0)
    assert [f.stat().st_size for f in files(tmp_path)] == [0]  # the segment taking appends is emptied
    wal.append(b"after trimming")
    assert drain(wal) == [b"after trimming"]
    wal.close()
    assert files(tmp_path) == []  # an empty own segment is removed on close


def test_unacknowledged_records_are_read_again(tmp_path):
    wal = WriteAheadLog(tmp_path)
    for i in range(5):
        wal.append(b"r%d" % i)
    first = wal.read(2)
    assert first.payloads == [b"r0", b"r1"]
    assert wal.read(2).payloads == [b"r0", b"r1"]  # not committed (Cassandra failed): the same again
    wal.commit(first)
    assert drain(wal) == [b"r2", b"r3", b"r4"]


def test_segments_rotate_and_each_is_deleted_once_acknowledged(tmp_path):
    frame = len(encode_frame(b"x" * 100))
    wal = WriteAheadLog(tmp_path, segment_bytes=10 * frame)
    for i in range(35):
        wal.append(b"%03d" % i + b"x" * 97)
    assert len(files(tmp_path)) == 4  # 10 + 10 + 10 + 5
    batch = wal.read(100)
    assert len(batch.payloads) == 10  # one segment per batch
    wal.commit(batch)
    assert len(files(tmp_path)) == 3  # the first, sealed and acknowledged, is gone
    rest = drain(wal, 7)
    assert [p[:3] for p in rest] == [b"%03d" % i for i in range(10, 35)]
    assert [f.stat().st_size for f in files(tmp_path)] == [0]
    wal.close()


def test_the_cap_refuses_just_over_it_and_takes_again_once_trimmed(tmp_path):
    payload = b"p" * 500
    frame = len(encode_frame(payload))
    wal = WriteAheadLog(tmp_path, max_bytes=8 * frame)
    for _ in range(8):
        wal.append(payload)  # exactly at the cap: taken
    with pytest.raises(LogFull):
        wal.append(payload)
    with pytest.raises(LogFull):
        wal.append(b"")  # even an empty record is a frame
    assert wal.pending() == (8, 8 * frame)  # nothing logged was dropped
    wal.commit(wal.read(1))
    assert wal.pending() == (7, 7 * frame)
    # The emptied bytes of a segment still taking appends count until the whole segment is trimmed.
    with pytest.raises(LogFull):
        wal.append(payload)
    drain(wal)
    wal.append(payload)
    assert wal.pending() == (1, frame)
    wal.close()


def test_concurrent_appends_share_fsyncs(tmp_path):
    wal = WriteAheadLog(tmp_path)
    threads = [
        threading.Thread(target=lambda n=n: [wal.append(b"%d-%d" % (n, i)) for i in range(40)])
        for n in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wal.pending()[0] == 320
    assert 0 < wal.syncs < 320  # group commit: one fsync covered several requests' records
    got = drain(wal, 50)
    assert sorted(got) == sorted(b"%d-%d" % (n, i) for n in range(8) for i in range(40))
    for n in range(8):  # each thread's records in its own order
        mine = [p for p in got if p.startswith(b"%d-" % n)]
        assert mine == [b"%d-%d" % (n, i) for i in range(40)]
    wal.close()


def test_without_sync_nothing_is_fsynced(tmp_path):
    wal = WriteAheadLog(tmp_path, sync=False)
    for i in range(20):
        wal.append(b"%d" % i)
    assert wal.syncs == 0 and wal.pending()[0] == 20
    wal.close()


APPENDING_CHILD = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    from gateway.store.wal import WriteAheadLog
    wal = WriteAheadLog({directory!r}, sync={sync})
    for i in range({count}):
        wal.append(b"child %d" % i)
    print("logged", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no close(), no atexit: a crash right after the answers left
""")


@pytest.mark.parametrize("sync", [True, False])
def test_a_killed_process_leaves_every_record_and_a_live_one_claims_them(tmp_path, sync):
    child = APPENDING_CHILD.format(repo=str(REPO), directory=str(tmp_path), sync=sync, count=50)
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert result.returncode == -signal.SIGKILL and result.stdout == "logged\n", result.stderr
    wal = WriteAheadLog(tmp_path)
    assert wal.claim_orphans() == 50
    assert drain(wal, 16) == [b"child %d" % i for i in range(50)]
    assert files(tmp_path) == []  # a shipped orphan is removed
    wal.close()


def test_a_live_owner_keeps_its_segments(tmp_path):
    owner = WriteAheadLog(tmp_path)
    owner.append(b"one")
    other = WriteAheadLog(tmp_path)
    assert other.claim_orphans() == 0  # the owner still holds the lock
    owner.close()  # a clean stop with records left: the file stays, unlocked
    assert other.claim_orphans() == 1
    assert drain(other) == [b"one"]
    other.close()


def test_a_torn_tail_is_detected_and_set_aside_not_shipped(tmp_path):
    good = [b"a" * 10, b"b" * 20]
    path = tmp_path / "wal-00000000000000000001-1-000001.log"
    frame = encode_frame(b"c" * 30)
    path.write_bytes(encode_frame(good[0]) + encode_frame(good[1]) + frame[: HEADER.size + 7])
    wal = WriteAheadLog(tmp_path)
    assert wal.claim_orphans() == 2
    assert drain(wal) == good
    assert (tmp_path / (path.name + ".corrupt")).read_bytes() == frame[: HEADER.size + 7]
    assert wal.corrupt_files == 1


def test_an_orphan_whose_claim_fails_on_a_full_disk_is_claimed_once_there_is_room(tmp_path, monkeypatch):
    path = tmp_path / "wal-00000000000000000001-1-000001.log"
    path.write_bytes(encode_frame(b"a") + encode_frame(b"b") + encode_frame(b"c" * 30)[: HEADER.size + 7])
    wal = WriteAheadLog(tmp_path)
    real_set_aside = wal._set_aside_tail

    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(wal, "_set_aside_tail", disk_full)
    assert wal.claim_orphans() == 0  # left for a later scan, not locked by a half-done claim
    other = WriteAheadLog(tmp_path)
    monkeypatch.setattr(other, "_set_aside_tail", real_set_aside)
    assert other.claim_orphans() == 2  # another process can take it
    assert drain(other) == [b"a", b"b"]
    monkeypatch.setattr(wal, "_set_aside_tail", real_set_aside)
    assert wal.claim_orphans() == 0  # shipped and removed by the other one
    wal.close()
    other.close()


def test_a_claim_retried_after_failing_half_way_keeps_the_torn_tail_once(tmp_path, monkeypatch):
    """The tail is copied aside, then cut off the segment: a cut that fails leaves the segment as it was, and
    the copy must go too, or the retried claim copies the same bytes after it."""
    path = tmp_path / "wal-00000000000000000001-1-000001.log"
    torn = encode_frame(b"c" * 30)[: HEADER.size + 7]
    path.write_bytes(encode_frame(b"a") + encode_frame(b"b") + torn)
    wal = WriteAheadLog(tmp_path)
    real_ftruncate = os.ftruncate

    def io_error(fd, length):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "ftruncate", io_error)
    assert wal.claim_orphans() == 0
    monkeypatch.setattr(os, "ftruncate", real_ftruncate)
    assert wal.claim_orphans() == 2
    assert path.with_name(path.name + ".corrupt").read_bytes() == torn
    assert drain(wal) == [b"a", b"b"]
    wal.close()


def test_a_segment_that_cannot_be_started_leaves_no_descriptor_or_file_behind(tmp_path, monkeypatch):
    """Every refused append tries to start the next segment again (ENOSPC on the rename, ENOLCK from an NFS
    lock): a descriptor kept each time would exhaust the worker's, sockets included, within a thousand."""
    wal = WriteAheadLog(tmp_path, segment_bytes=64)
    wal.append(b"x" * 100)  # the first segment is full: the next append starts another
    names = sorted(p.name for p in tmp_path.iterdir())
    real_rename = os.rename

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "rename", no_space)
    descriptors = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(LogError):
            wal.append(b"refused")
    assert len(os.listdir("/proc/self/fd")) == descriptors
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    monkeypatch.setattr(os, "rename", real_rename)
    wal.append(b"taken")
    assert drain(wal) == [b"x" * 100, b"taken"]
    wal.close()


def test_files_of_the_earlier_spool_are_claimed_too(tmp_path):
    (tmp_path / "spool-00000000000000000001-1.log").write_bytes(encode_frame(b"old") + encode_frame(b"older"))
    wal = WriteAheadLog(tmp_path)
    assert wal.claim_orphans() == 2
    assert drain(wal) == [b"old", b"older"]
    assert list(tmp_path.glob("spool-*")) == []


def read_bytes_so_far() -> int:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"])


def test_a_large_orphan_is_claimed_and_shipped_in_constant_memory_and_one_pass(tmp_path):
    payload = b"z" * 1500  # about a prediction's JSON
    count = 20_000  # ~30 MB
    path = tmp_path / "wal-00000000000000000001-1-000001.log"
    with open(path, "wb") as out:
        for i in range(count):
            out.write(encode_frame(b"%08d" % i + payload))
    size = path.stat().st_size
    wal = WriteAheadLog(tmp_path, chunk_bytes=256 * 1024)
    tracemalloc.start()
    before = read_bytes_so_far()
    assert wal.claim_orphans() == count
    seen = 0
    while (batch := wal.read(256)) is not None:
        assert batch.payloads[0][:8] == b"%08d" % seen
        seen += len(batch.payloads)
        wal.commit(batch)
    read = read_bytes_so_far() - before
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert seen == count
    assert read < 2.2 * size  # one scan when claimed, one read when shipped: linear, not per chunk again
    assert peak < 4 * 256 * 1024  # a few chunks, not the file
    assert not path.exists()


def test_the_driver_never_stops_reconnecting_to_a_node_that_is_down():
    """An outage longer than the driver's default 64 attempts (~2 minutes at 2 s) must not leave the store
    unable to ship its log once the node is back (`python -m bench.store --drill` found it)."""
    from itertools import islice

    from gateway.store.cluster import build_cluster

    schedule = build_cluster(["127.0.0.1"], 9042).reconnection_policy.new_schedule()
    delays = list(islice(schedule, 10_000))  # a day and a half of attempts
    assert len(delays) == 10_000 and max(delays) <= 2.0


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


def test_a_busy_log_under_a_small_cap_keeps_taking_records_while_they_ship(tmp_path):
    """Appends and acknowledgements interleave, so the segment taking appends is never empty at a commit;
    rotating at a quarter of the cap lets whole acknowledged segments go before the cap is reached."""
    payload = b"q" * 1500
    wal = WriteAheadLog(tmp_path, max_bytes=64 * 1024)
    for n in range(1000):  # ~1.5 MB through a 64 KiB log, three records behind
        wal.append(payload)
        if n >= 3:
            wal.commit(wal.read(1))
    assert wal.pending()[0] == 3
    drain(wal, 64)
    wal.close()


def unreachable_store(tmp_path, **options):
    from gateway.store import PredictionStore

    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    return PredictionStore("127.0.0.1", port=9, spool_dir=tmp_path, connect_timeout=0.5, **options)


def a_record():
    from gateway.store.records import PredictionRecord

    return PredictionRecord(
        id=uuid_from_time(datetime.now(UTC)),
        created_at=datetime.now(UTC),
        filename="x.png",
        image_sha256="0" * 64,
        input_image=b"",
        digit=3,
        probabilities=[0.1] * 10,
        model_name="mnist",
        model_version=1,
        preprocess_ms=1.0,
        model_ms=1.0,
        total_ms=2.0,
        client_addr="127.0.0.1",
    )


def test_closing_with_records_left_says_how_many(tmp_path, caplog):
    store = unreachable_store(tmp_path)
    store.record(a_record())
    store.record(a_record())
    with caplog.at_level("INFO", logger="gateway.store.store"):
        store.close(timeout=1)
    assert "store closed; 2 prediction(s) left" in caplog.text


def test_a_hidden_new_file_left_by_a_dead_process_is_removed_when_claiming(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / f".wal-00000000000000000001-{int(dead.stdout)}-000001.log.new"
    live = tmp_path / f".wal-00000000000000000001-{os.getppid()}-000001.log.new"  # the test runner's parent
    # On a volume shared by pods a pid names a process of another pid namespace: a file being created there
    # right now carries a pid that is dead here. Only an old one is left over.
    fresh = tmp_path / f".wal-00000000000000000002-{int(dead.stdout)}-000001.log.new"
    for path in (stale, live, fresh):
        path.touch()
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(live, (old, old))
    wal = WriteAheadLog(tmp_path)
    assert wal.claim_orphans() == 0
    assert not stale.exists()
    assert live.exists()
    assert fresh.exists()
    wal.close()


def test_after_a_failed_fsync_every_frame_it_left_unsynced_fails_and_appends_move_on(tmp_path, monkeypatch):
    real_fdatasync, entered, release, calls = os.fdatasync, threading.Event(), threading.Event(), []

    def failing_once(fd):  # like Linux: the error is reported once, a second sync of the file returns 0
        calls.append(fd)
        if len(calls) == 1:
            entered.set()
            release.wait(30)
            raise OSError(5, "Input/output error")
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", failing_once)
    wal = WriteAheadLog(tmp_path)
    outcomes: dict[str, object] = {}

    def append(name):
        try:
            wal.append(name.encode())
            outcomes[name] = "ok"
        except OSError as exc:
            outcomes[name] = exc

    leader = threading.Thread(target=append, args=("leader",))
    leader.start()
    assert entered.wait(30)
    waiter = threading.Thread(target=append, args=("waiter",))
    waiter.start()
    while wal.pending()[0] < 2:  # the waiter's frame is written and it waits on the leader's sync
        threading.Event().wait(0.01)
    release.set()
    leader.join(30)
    waiter.join(30)
    assert isinstance(outcomes["leader"], OSError)
    assert isinstance(outcomes["waiter"], OSError)  # not "ok" on a second sync that proves nothing
    failed_segment = files(tmp_path)
    wal.append(b"after")  # a new segment takes appends
    assert len(files(tmp_path)) == len(failed_segment) + 1
    wal.close()


def test_a_writeback_error_fails_the_append_whose_frame_it_lost_whichever_sync_reports_it(
    tmp_path, monkeypatch
):
    """Linux reports a file's writeback error to one fdatasync only. A log that syncs a file from two
    threads at once (a rotation while a group commit is in flight) can hand the error to the rotation
    and a clean 0 to the group commit's leader, whose append would then say its lost frame is durable."""
    real_fdatasync, in_sync, overlapped, errors = os.fdatasync, threading.Event(), threading.Event(), []

    def error_to_one_caller(fd):  # one pending error on the file, for the first sync that checks it
        if errors:  # told already: later syncs return 0
            return real_fdatasync(fd)
        if in_sync.is_set():  # another sync of the log is running: this one meets the error
            overlapped.set()
            errors.append("rotation")
            raise OSError(5, "Input/output error")
        in_sync.set()
        try:
            if not overlapped.wait(2):  # no second sync came while this one ran: the error is this one's
                errors.append("leader")
                raise OSError(5, "Input/output error")
            real_fdatasync(fd)
        finally:
            in_sync.clear()

    monkeypatch.setattr(os, "fdatasync", error_to_one_caller)
    wal = WriteAheadLog(tmp_path, max_bytes=1024)  # segments of 256 bytes: the first frame fills one
    outcomes: dict[str, object] = {}

    def append(name, payload):
        try:
            wal.append(payload)
            outcomes[name] = "ok"
        except OSError as exc:
            outcomes[name] = exc

    leader = threading.Thread(target=append, args=("leader", b"l" * 290))
    leader.start()
    assert in_sync.wait(30)
    rotating = threading.Thread(target=append, args=("rotating", b"r" * 10))
    rotating.start()
    leader.join(30)
    rotating.join(30)
    assert errors, "the disk error was reported to no sync"
    assert isinstance(outcomes["leader"], OSError), (errors, outcomes)  # its frame was in the failed file
    assert outcomes["rotating"] == "ok"  # its frame went to a new segment, synced
    wal.close()


def test_the_shipper_survives_a_disk_error_and_reports_it(tmp_path, monkeypatch, caplog):
    from gateway.store import store as store_module

    calls = []

    def failing_first(self):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(5, "Input/output error")
        return 0

    monkeypatch.setattr(store_module, "_ORPHAN_SCAN_S", 0.0)
    monkeypatch.setattr(WriteAheadLog, "claim_orphans", failing_first)
    store = unreachable_store(tmp_path, max_backoff=0.05)
    with caplog.at_level("WARNING", logger="gateway.store.store"):
        store.record(a_record())
        deadline = time.monotonic() + 30
        while len(calls) < 2 and time.monotonic() < deadline:  # a later pass runs: the thread lives on
            threading.Event().wait(0.01)
    assert len(calls) >= 2
    assert store._shipper.is_alive()
    assert "the shipper failed (OSError" in caplog.text
    store.close(timeout=1)


def test_a_replacement_claims_a_nearly_full_orphan_and_still_takes_records(tmp_path):
    cap, payload = 64 * 1024, b"p" * 1000
    nearly_full = tmp_path / "wal-00000000000000000001-1-000001.log"
    nearly_full.write_bytes(encode_frame(payload) * 60)  # ~59 KiB of a 64 KiB cap
    another = tmp_path / "wal-00000000000000000002-1-000001.log"
    another.write_bytes(encode_frame(payload) * 10)
    wal = WriteAheadLog(tmp_path, max_bytes=cap)
    assert wal.claim_orphans() == 60  # the second would take the claimed bytes past the cap: left for later
    for _ in range(60):
        wal.append(payload)  # the worker's own records: its predecessor's log does not fill its cap
    with pytest.raises(LogFull):
        wal.append(payload * 10)
    assert len(drain(wal, 64)) == 120
    assert wal.claim_orphans() == 10
    assert len(drain(wal)) == 10
    wal.close()


class _InstantSession:
    """Cassandra that takes every write at once (the statements are kept)."""

    def __init__(self, written: list) -> None:
        self.written = written

    def prepare(self, cql):
        class Prepared:
            is_idempotent = False

            def bind(self, values):
                return (cql, tuple(values))

        return Prepared()

    def execute_async(self, statement, timeout=None):
        self.written.append(statement)

        class Done:
            def result(self):
                return []

        return Done()

    def execute(self, statement, timeout=None):
        class Row:
            def one(self):
                return ("5.0",)

        return Row()


def test_counters_added_just_before_close_are_written(tmp_path, monkeypatch):
    """Model-server errors and shadow agreement are counts, not records: close() ships them too."""
    from gateway.store import PredictionStore, stats
    from gateway.store import store as store_module

    written: list = []

    class Cluster:
        def connect(self):
            return _InstantSession(written)

        def shutdown(self):
            pass

    monkeypatch.setattr(store_module, "build_cluster", lambda *a, **k: Cluster())
    minute = stats.minute_of(datetime.now(UTC))
    for attempt in range(5):
        store = PredictionStore("127.0.0.1", spool_dir=tmp_path / str(attempt), write_linger=0.0)
        assert store.ping()  # connected and healthy: the shipper idles
        written.clear()
        store.add_counts({("mnist", 7, minute, stats.ERRORS): 1})
        store.close(timeout=5)
        assert any("version_stats" in str(statement) for statement in written), attempt

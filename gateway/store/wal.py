"""The write-ahead log: a prediction is on local disk before its answer leaves, and stays until Cassandra
has it.

- **Segments.** Each process appends to its own segment files `wal-<created ns>-<pid>-<seq>.log`, holding an
  exclusive `flock` on each for as long as it keeps it open; a file is created under a hidden name, locked,
  then renamed (and the directory fsynced), so no one sees it unlocked; when a step fails the file is removed
  and its descriptor closed (the next append tries again). A segment is sealed at `segment_bytes` (4 MiB, at
  most a quarter of the cap) and the next one started.
- **Frames.** magic, length, CRC-32, payload. A torn or corrupt tail (a crash in the middle of a write) is
  detected when the file is claimed; its bytes are moved aside to `<file>.corrupt` and reported, never shipped
  as garbage and never deleted silently.
- **Group commit.** `append` writes the frame and waits until an `fdatasync` covers it. The first waiter syncs
  for everyone whose frame is written by then, so concurrent requests share one sync. With `sync=False` the
  append returns once the kernel has the bytes: that survives the process (SIGKILL, OOM kill), not the
  machine. A failed sync fails every append whose frame is in that segment and seals it (the next append
  starts a new one): a failed `fdatasync` reports its error once, so a later one on the same file proves
  nothing. Syncs never overlap (a sealed segment's last sync is a group commit too), so the error always
  reaches the appends it concerns. Those refused frames stay in the sealed segment and are shipped like any
  other (the shipper reads frames as soon as they are written): rows whose id no client was given.
- **Shipping and trimming.** `read` hands out the oldest unacknowledged records of one segment (claimed
  segments first, then this process's own, oldest first), at most `limit` records and about `chunk_bytes`:
  constant memory, each byte read once. `commit` marks them acknowledged; a sealed segment whose records are
  all acknowledged is deleted, and the segment being written is truncated to empty. A crash before `commit`
  ships those records again (the writes are idempotent).
- **Orphans.** A segment whose lock can be taken belongs to a process that is gone: `claim_orphans` takes it
  over, checking its frames in one streaming pass outside the lock appends take; a hidden segment a process
  left unnamed when it died is removed once it is old. A claim that fails (a full
  disk while setting a torn tail aside, an I/O error) unlocks the segment again, for a later scan or another
  process. Files of the earlier single-file spool (`spool-*.log`, the same frames) are claimed the same way.
- **Cap.** The bytes of this process's own segments never exceed `max_bytes`: an append past it raises
  `LogFull`, and nothing already logged is ever dropped. Claimed segments do not count against it (a
  replacement worker must not refuse predictions because its predecessor died with a full log); a process
  claims orphans while they add up to at most another `max_bytes` (one larger file on its own is still taken)
  and leaves the rest to a later scan or another process.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"\xa7S"
HEADER = struct.Struct(">2sII")  # magic, payload length, CRC-32 of the payload
MAX_PAYLOAD = 16 * 1024 * 1024
SEGMENT_PATTERNS = ("wal-*.log", "spool-*.log")
_STALE_NEW_S = 600.0  # a hidden segment still unrenamed after this was left by a process that died

log = logging.getLogger(__name__)


class LogError(OSError):
    """The log cannot take a record (disk full, I/O error, directory not writable)."""


class LogFull(LogError):
    """The log holds `max_bytes` already: the record is refused, nothing is dropped."""


def encode_frame(payload: bytes) -> bytes:
    return HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def scan_frames(data: bytes) -> tuple[list[bytes], int]:
    """The payloads of the complete, intact frames at the start of `data`, and where the intact part ends."""
    payloads, offset = [], 0
    while offset + HEADER.size <= len(data):
        magic, length, crc = HEADER.unpack_from(data, offset)
        end = offset + HEADER.size + length
        if magic != MAGIC or length > MAX_PAYLOAD or end > len(data):
            break
        payload = data[offset + HEADER.size : end]
        if zlib.crc32(payload) != crc:
            break
        payloads.append(payload)
        offset = end
    return payloads, offset


@dataclass(eq=False)
class _Segment:
    path: Path
    fd: int
    size: int = 0  # end of the intact frames
    acked: int = 0  # records before this offset are in Cassandra
    records: int = 0  # records between `acked` and `size`
    own: bool = True
    synced_to: int = 0  # the log position (WriteAheadLog._written) up to which a sync of this file vouches
    sync_error: OSError | None = None  # an fdatasync of it failed: no later one can vouch for it, sealed

    @property
    def sync_failed(self) -> bool:
        return self.sync_error is not None


@dataclass(frozen=True)
class Batch:
    """Consecutive records of one segment, from its first unacknowledged one up to `end`."""

    segment: _Segment
    payloads: list[bytes]
    end: int


class WriteAheadLog:
    def __init__(
        self,
        directory: Path | str,
        *,
        max_bytes: int = 256 * 1024 * 1024,
        segment_bytes: int = 4 * 1024 * 1024,
        chunk_bytes: int = 1024 * 1024,
        sync: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        # A quarter of the cap at most: acknowledged records are trimmed a segment at a time, so a busy log
        # must rotate well before the cap, or it would fill with records Cassandra already has.
        self.segment_bytes = min(segment_bytes, max(max_bytes // 4, 1))
        self.chunk_bytes = chunk_bytes
        self.sync = sync
        self.corrupt_files = 0
        self.syncs = 0  # fdatasync calls of group commit: fewer than appends when requests overlap
        self._lock = threading.Lock()
        self._synced_cond = threading.Condition(self._lock)
        self._own: list[_Segment] = []  # oldest first; the last one takes appends
        self._claimed: list[_Segment] = []
        self._own_bytes = 0  # size of this process's own segments: what the cap counts
        self._written = 0  # bytes appended by this process, ever: the position group commit syncs up to
        self._syncing = False  # one fdatasync at a time: the one that meets a file's error is the one told
        self._seq = 0

    # -- appending
    def append(self, payload: bytes) -> None:
        """Write one record; return once it is durable (fsynced, or in the kernel with `sync=False`)."""
        frame = encode_frame(payload)
        with self._lock:
            if self._own_bytes + len(frame) > self.max_bytes:
                raise LogFull(
                    f"the log in {self.directory} holds {self._own_bytes} bytes (cap {self.max_bytes})"
                )
            segment = self._writable_segment()
            try:
                written = os.write(segment.fd, frame)
                if written != len(frame):
                    raise OSError(f"short write ({written} of {len(frame)} bytes)")
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.ftruncate(segment.fd, segment.size)  # leave no torn frame behind
                raise LogError(f"cannot append to {segment.path}: {exc}") from exc
            segment.size += len(frame)
            segment.records += 1
            self._own_bytes += len(frame)
            self._written += len(frame)
            if self.sync:
                self._wait_synced(segment, self._written)

    def _wait_synced(self, segment: _Segment, position: int) -> None:
        """Group commit (called holding the lock): return once a sync of `segment` covers `position`, leading
        one when none is running; raise once a sync of it has failed.

        A failed fdatasync reports its error once: a later one on the same file may return 0 with the frame
        lost. So the error is kept on the segment, every frame in it fails from then on, and appends move to
        a new one (see `_writable_segment`). Syncs never overlap, so the sync that meets an error is always
        the one whose frames it concerns."""
        while segment.synced_to < position:
            if segment.sync_error is not None:
                raise LogError(f"cannot sync {segment.path}: {segment.sync_error}")
            if self._syncing:
                self._synced_cond.wait()
                continue
            try:  # a duplicate: the segment may be trimmed and its descriptor closed during the sync
                fd = os.dup(segment.fd)
            except OSError as exc:
                raise LogError(f"cannot sync {segment.path}: {exc}") from exc
            self._syncing, target = True, self._written
            self._lock.release()
            failure = None
            try:
                os.fdatasync(fd)
            except OSError as exc:
                failure = exc
            finally:
                os.close(fd)
                self._lock.acquire()
                self._syncing = False
                self.syncs += 1
                if failure is None:
                    segment.synced_to = max(segment.synced_to, target)
                else:
                    segment.sync_error = failure
                self._synced_cond.notify_all()

    def _writable_segment(self) -> _Segment:
        last = self._own[-1] if self._own else None
        if last is not None and self.sync and not last.sync_failed and last.size >= self.segment_bytes:
            # Sealed: whole on disk before the next one starts, so later syncs need only that one. A failure
            # is told to the appends in it; this append goes to the next segment all the same.
            with contextlib.suppress(LogError):
                self._wait_synced(last, self._written)
            if self._own[-1] is not last:  # another append started the next one while this one waited
                return self._writable_segment()
        if last is not None and last.size < self.segment_bytes and not last.sync_failed:
            return last
        if last is not None and last.sync_failed and last.records == 0:  # sealed as it is: nothing to keep
            self._drop(self._own.pop())
        self._seq += 1
        name = f"wal-{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}.log"
        hidden, fd = self.directory / f".{name}.new", None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(hidden, self.directory / name)
            _fsync_dir(self.directory)  # the file's name is durable before any record counts on it
        except OSError as exc:
            if fd is not None:  # the next append tries again: leave no descriptor or empty file behind
                for path in (hidden, self.directory / name):
                    with contextlib.suppress(OSError):
                        path.unlink(missing_ok=True)
                os.close(fd)
            raise LogError(f"cannot create a log segment in {self.directory}: {exc}") from exc
        self._own.append(_Segment(self.directory / name, fd))
        return self._own[-1]

    # -- shipping
    def read(self, limit: int) -> Batch | None:
        """Up to `limit` unacknowledged records of the oldest segment holding any (None: all acknowledged)."""
        with self._lock:
            segment = next((s for s in [*self._claimed, *self._own] if s.records > 0), None)
            if segment is None:
                return None
            start, end = segment.acked, segment.size
        data = os.pread(segment.fd, min(end - start, self.chunk_bytes), start)
        if len(data) < end - start and len(data) >= HEADER.size:  # make room for at least one whole frame
            _, length, _ = HEADER.unpack_from(data)
            if HEADER.size + length > len(data):
                data = os.pread(segment.fd, HEADER.size + length, start)
        payloads, offset = [], 0
        while offset + HEADER.size <= len(data) and len(payloads) < limit:
            _, length, _ = HEADER.unpack_from(data, offset)
            if offset + HEADER.size + length > len(data):
                break
            payloads.append(data[offset + HEADER.size : offset + HEADER.size + length])
            offset += HEADER.size + length
        return Batch(segment, payloads, start + offset)

    def commit(self, batch: Batch) -> None:
        """The records of `batch` are in Cassandra: trim them (a fully acknowledged segment is deleted, or
        emptied when it is the one taking appends)."""
        segment = batch.segment
        with self._lock:
            segment.acked = batch.end
            segment.records -= len(batch.payloads)
            if segment.records > 0:
                return
            if self._own and segment is self._own[-1]:
                os.ftruncate(segment.fd, 0)  # appends hold the same lock: nothing unshipped is cut
                self._own_bytes -= segment.size
                segment.size = segment.acked = 0
            else:
                (self._own if segment.own else self._claimed).remove(segment)
                self._drop(segment)

    def _drop(self, segment: _Segment) -> None:
        segment.path.unlink(missing_ok=True)  # unlinked before unlocked: no one claims a finished file
        os.close(segment.fd)
        if segment.own:
            self._own_bytes -= segment.size

    # -- orphans
    def claim_orphans(self) -> int:
        """Take over segments left by processes that are gone; return how many records they hold."""
        try:
            candidates = sorted({p for pattern in SEGMENT_PATTERNS for p in self.directory.glob(pattern)})
        except OSError:
            return 0
        with self._lock:
            known = {s.path for s in [*self._claimed, *self._own]}
            claimed_bytes = sum(s.size for s in self._claimed)
        self._remove_stale_new_files()
        found = 0
        for path in candidates:
            if path in known:
                continue
            with contextlib.suppress(OSError):
                if claimed_bytes and claimed_bytes + path.stat().st_size > self.max_bytes:
                    continue  # for a later scan (once these are shipped) or another process
            segment = self._claim(path)
            if segment is None:
                continue
            with self._lock:
                self._claimed.append(segment)
            claimed_bytes += segment.size
            found += segment.records
        return found

    def _remove_stale_new_files(self) -> None:
        """Remove the hidden, empty `.wal-*.log.new` a process left when it died between creating a segment
        and renaming it (its name carries the creator's pid). Only one older than `_STALE_NEW_S`: on a volume
        shared by pods the pid belongs to another pid namespace, and a file being created there now carries a
        pid that is dead here."""
        with contextlib.suppress(OSError):
            for path in self.directory.glob(".wal-*.log.new"):
                try:
                    pid = int(path.name.split("-")[2])
                except (IndexError, ValueError):
                    continue
                with contextlib.suppress(OSError):
                    if time.time() - path.stat().st_mtime < _STALE_NEW_S:
                        continue
                    if pid != os.getpid() and not process_alive(pid):
                        path.unlink(missing_ok=True)

    def _claim(self, path: Path) -> _Segment | None:
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return None  # shipped and removed by another process meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # its owner is alive
            return None
        if not path.exists():  # removed between our open and our lock
            os.close(fd)
            return None
        try:
            records, intact = self._scan(fd)
            total = os.fstat(fd).st_size
            if intact < total:
                self._set_aside_tail(path, fd, intact, total)
        except OSError as exc:  # a full disk, an I/O error: unlocked again, for a later scan or another one
            os.close(fd)
            log.error("cannot claim the log segment %s (%s); trying again later", path, exc)
            return None
        if records == 0:
            path.unlink(missing_ok=True)
            os.close(fd)
            return None
        return _Segment(path, fd, size=intact, records=records, own=False)

    def _scan(self, fd: int) -> tuple[int, int]:
        """(intact records, where they end), reading the file once in pieces of about `chunk_bytes`."""
        records, offset = 0, 0
        while True:
            data = os.pread(fd, self.chunk_bytes, offset)
            if len(data) >= HEADER.size:
                magic, length, _ = HEADER.unpack_from(data)
                if magic == MAGIC and length <= MAX_PAYLOAD and HEADER.size + length > len(data):
                    data = os.pread(fd, HEADER.size + length, offset)  # one frame larger than a piece
            payloads, intact = scan_frames(data)
            records += len(payloads)
            offset += intact
            if not payloads:
                return records, offset

    def _set_aside_tail(self, path: Path, fd: int, start: int, end: int) -> None:
        aside = path.with_name(path.name + ".corrupt")
        with open(aside, "ab", buffering=0) as out:  # unbuffered: nothing left to write after a truncate
            kept = out.tell()  # what earlier claims set aside stays; this one's copy is undone if it fails
            try:
                for position in range(start, end, self.chunk_bytes):
                    data = memoryview(os.pread(fd, min(self.chunk_bytes, end - position), position))
                    while data:  # a raw write may be short (a disk filling up): the rest, or its error
                        data = data[out.write(data) :]
                os.fsync(out.fileno())
                os.ftruncate(fd, start)
            except OSError:
                out.truncate(kept)  # the claim is retried later and copies the tail again
                raise
        self.corrupt_files += 1
        log.error(
            "log segment %s ended in %d bytes that are not a complete record (a crash during a write?); "
            "kept them in %s",
            path,
            end - start,
            aside,
        )

    # -- state
    def pending(self) -> tuple[int, int]:
        """(records, bytes) not yet acknowledged by Cassandra, in every segment this process holds."""
        with self._lock:
            segments = [*self._claimed, *self._own]
            return sum(s.records for s in segments), sum(s.size - s.acked for s in segments)

    def close(self) -> None:
        """Release the files: empty ones are removed, the others stay (unlocked) for a later process."""
        with self._lock:
            for segment in [*self._claimed, *self._own]:
                if segment.records == 0:
                    segment.path.unlink(missing_ok=True)
                os.close(segment.fd)
            self._own, self._claimed, self._own_bytes = [], [], 0


def set_aside(directory: Path, payload: bytes) -> Path:
    """Keep a record that cannot be decoded in `directory/rejected/` (fsynced), for a person to look at."""
    folder = directory / "rejected"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rejected-{os.getpid()}.log"
    with open(path, "ab") as out:
        out.write(encode_frame(payload))
        out.flush()
        os.fsync(out.fileno())
    return path


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists (a pid in a file name may belong to a dead worker)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

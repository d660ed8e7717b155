"""A durable local spool: records Cassandra has not taken yet, kept on disk until they are written.

- Each process appends to its own file `spool-<created ns>-<pid>.log`, holding an exclusive `flock` on it for
  its lifetime; the file is created under a hidden name, locked, then renamed, so no one sees it unlocked.
- A file whose lock can be taken belongs to a process that is gone: any live process may claim and replay it.
- Every record is a frame: magic, length, CRC-32, payload; each append is fsynced before `append` returns. A
  torn or corrupt tail (a crash in the middle of a write) is detected; its bytes are moved aside to
  `<file>.corrupt` and reported, never replayed as garbage and never deleted silently.
- Records are handed out oldest first (claimed files, then this process's own) and removed only after the
  caller commits them, so a crash during replay replays them again (the writes are idempotent)."""

from __future__ import annotations

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

log = logging.getLogger(__name__)


class SpoolError(OSError):
    """The spool cannot take a record (disk full, directory not writable)."""


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


@dataclass
class _Segment:
    path: Path
    fd: int
    start: int = 0  # first byte not yet committed
    end: int = 0  # end of the intact frames
    count: int = 0  # records between start and end
    own: bool = False


class Spool:
    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._own: _Segment | None = None
        self._claimed: list[_Segment] = []
        self.corrupt_files = 0

    # -- writing
    def append(self, payload: bytes) -> None:
        frame = encode_frame(payload)
        with self._lock:
            segment = self._own or self._open_own()
            try:
                written = os.write(segment.fd, frame)
                if written != len(frame):
                    raise OSError(f"short write ({written} of {len(frame)} bytes)")
                os.fdatasync(segment.fd)
            except OSError as exc:
                os.ftruncate(segment.fd, segment.end)  # leave no torn frame behind
                raise SpoolError(f"cannot append to the spool {segment.path}: {exc}") from exc
            segment.end += len(frame)
            segment.count += 1

    def _open_own(self) -> _Segment:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            name = f"spool-{time.time_ns():020d}-{os.getpid()}.log"
            hidden = self.directory / f".{name}.new"
            fd = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(hidden, self.directory / name)
            _fsync_dir(self.directory)  # the file's name is durable before any record counts on it
        except OSError as exc:
            raise SpoolError(f"cannot create a spool file in {self.directory}: {exc}") from exc
        self._own = _Segment(self.directory / name, fd, own=True)
        return self._own

    # -- reading
    def depth(self) -> int:
        with self._lock:
            return sum(s.count for s in self._segments())

    def claim_orphans(self) -> int:
        """Take over spool files left by processes that are gone; return how many records they hold."""
        found = 0
        try:
            candidates = sorted(self.directory.glob("spool-*.log"))
        except OSError:
            return 0
        with self._lock:
            known = {s.path for s in self._segments()}
            for path in candidates:
                if path in known:
                    continue
                segment = self._claim(path)
                if segment is not None:
                    self._claimed.append(segment)
                    found += segment.count
        return found

    def _claim(self, path: Path) -> _Segment | None:
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return None  # replayed and removed by another process meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # its owner is alive
            return None
        if not path.exists():  # removed between our open and our lock
            os.close(fd)
            return None
        data = _read_all(fd)
        payloads, intact = scan_frames(data)
        if intact < len(data):
            self._set_aside_tail(path, fd, data[intact:])
        return _Segment(path, fd, start=0, end=intact, count=len(payloads))

    def _set_aside_tail(self, path: Path, fd: int, tail: bytes) -> None:
        aside = path.with_name(path.name + ".corrupt")
        with open(aside, "ab") as f:
            f.write(tail)
            f.flush()
            os.fsync(f.fileno())
        os.ftruncate(fd, os.fstat(fd).st_size - len(tail))
        self.corrupt_files += 1
        log.error(
            "spool file %s ended in %d bytes that are not a complete record (a crash during a write?); "
            "kept them in %s",
            path,
            len(tail),
            aside,
        )

    def peek(self, limit: int) -> tuple[object, list[bytes], int] | None:
        """Up to `limit` records of the oldest segment with any: (segment, payloads, end offset)."""
        with self._lock:
            segment = next((s for s in self._segments() if s.count > 0), None)
            if segment is None:
                return None
            start, end = segment.start, segment.end
        data = os.pread(segment.fd, end - start, start)
        payloads, offset = [], 0
        while offset < len(data) and len(payloads) < limit:
            _, length, _ = HEADER.unpack_from(data, offset)
            payloads.append(data[offset + HEADER.size : offset + HEADER.size + length])
            offset += HEADER.size + length
        return segment, payloads, start + offset

    def commit(self, segment: object, offset: int, records: int) -> None:
        """Forget the records up to `offset` (they are in Cassandra); remove or truncate an emptied file."""
        assert isinstance(segment, _Segment)
        with self._lock:
            segment.start = offset
            segment.count -= records
            if segment.count > 0:
                return
            if segment.own:
                os.ftruncate(segment.fd, 0)  # appends hold the same lock, so nothing new is lost
                segment.start = segment.end = 0
            else:
                self._claimed.remove(segment)
                segment.path.unlink(missing_ok=True)
                os.close(segment.fd)

    def close(self) -> None:
        """Release the files; the own file is removed when empty, else kept for a later replay."""
        with self._lock:
            for segment in self._segments():
                if segment.count == 0:
                    segment.path.unlink(missing_ok=True)
                os.close(segment.fd)
            self._own, self._claimed = None, []

    def _segments(self) -> list[_Segment]:
        return [*self._claimed, *([self._own] if self._own else [])]


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0) if size else b""


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

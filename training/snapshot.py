"""Feedback snapshots: labelled model inputs from users, frozen as an immutable, versioned training set.

    <root>/<id>/train.npz      images uint8 [n, 28, 28], labels, predicted (uint8 [n]), model_versions
    <root>/<id>/holdout.npz    the same keys: never trained on, the yardstick of the quality gate
    <root>/<id>/manifest.json  id, created, query window, counts per digit and side, warnings, sha256s

Rows are gathered in a `Spool` (fixed-size records on disk, de-duplicated by the sha256 of the 784 input
bytes, the latest label wins) so an export holds one page in memory plus ~150 bytes per distinct image, and
can stop and resume. `publish()` splits by a stable hash of the image (a given image never changes side),
writes the files into a hidden `.tmp-*` sibling, fsyncs, makes them read-only and renames the directory to
its id: a snapshot appears complete or not at all, and its id (creation time + content hash) is never an
integer, so it can never be mistaken for a model version.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.contract import IMAGE_SHAPE, NUM_CLASSES
from training.errors import TrainingError

FORMAT = 1
MANIFEST_FILE = "manifest.json"
SIDES = ("train", "holdout")
IMAGE_BYTES = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
DEFAULT_HOLDOUT_PERCENT = 20
DEFAULT_MIN_LABELS = 200  # fewer labels than this: the snapshot is written with a warning
SPLIT_RULE = "holdout when int.from_bytes(sha256(input)[:8], 'big') % 100 < holdout_percent"
RECORD = np.dtype(
    [
        ("sha256", "S32"),
        ("image", "u1", (IMAGE_BYTES,)),
        ("label", "u1"),
        ("predicted", "u1"),
        ("model_version", "<i8"),
        ("updated_ms", "<i8"),
    ]
)
# The name `publish` gives a snapshot: its creation time (UTC), then the first 10 hex of its files' hash.
ID_PATTERN = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{10}")
ROWS_FILE = "rows.bin"
STATE_FILE = "state.json"


class SnapshotError(TrainingError):
    """A snapshot is missing, incomplete, altered (sha256 mismatch) or of an unknown format."""


def image_hash(image: bytes) -> bytes:
    return hashlib.sha256(image).digest()


def is_holdout(digest: bytes, holdout_percent: int) -> bool:
    """The split rule (SPLIT_RULE): depends on the image alone, so re-exports never move an image across."""
    return int.from_bytes(digest[:8], "big") % 100 < holdout_percent


def write_json_atomic(path: Path, content: dict) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(content, out, indent=2, sort_keys=True)
        out.write("\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The rows of an export in progress: `rows.bin` (RECORD after RECORD) and `state.json` (the checkpoint).

    `add` de-duplicates by image hash (a newer label replaces the record in place); `checkpoint` makes the
    rows durable and then records the caller's state (the paging position), so after a crash the rows on disk
    are those the checkpoint counts, and re-reading the page after it changes nothing (replays are no-ops).
    A checkpoint that cannot be true (`state.json` unreadable, `rows.bin` shorter than the records it counts,
    the name taken by a file) is thrown away: the spool starts empty and `damaged` says why."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.damaged: str | None = self._damage()
        if self.damaged:
            if self.directory.is_dir() and not self.directory.is_symlink():
                shutil.rmtree(self.directory)
            else:
                self.directory.unlink()
        self.directory.mkdir(parents=True, exist_ok=True)
        state_path = self.directory / STATE_FILE
        self.state: dict = json.loads(state_path.read_text()) if state_path.exists() else {}
        records = int(self.state.get("records", 0))
        (self.directory / ROWS_FILE).touch()
        # r+b, not a+b: appending mode would send the in-place replacement of a record to the end.
        self._file = open(self.directory / ROWS_FILE, "r+b")  # noqa: SIM115 - closed by close()
        self._file.truncate(records * RECORD.itemsize)  # rows written after the last checkpoint are dropped
        self.records = records
        self._index: dict[bytes, tuple[int, int, int]] = {}  # sha256 -> (record, updated_ms, label)
        self._index_existing()

    def _damage(self) -> str | None:
        """Why the checkpoint here cannot be resumed from, or None (none at all, or a sound one)."""
        if not self.directory.exists() and not self.directory.is_symlink():
            return None
        if not self.directory.is_dir():
            return f"{self.directory} is not a directory"
        state_path, rows_path = self.directory / STATE_FILE, self.directory / ROWS_FILE
        if not state_path.exists():
            return None
        try:
            state = json.loads(state_path.read_text())
        except (OSError, ValueError) as exc:
            return f"{state_path} unreadable ({exc})"
        records = state.get("records", 0) if isinstance(state, dict) else None
        if not isinstance(records, int) or records < 0:
            return f"{state_path} is not a checkpoint"
        held = rows_path.stat().st_size // RECORD.itemsize if rows_path.is_file() else 0
        if held < records:
            return f"{rows_path} holds {held} of the {records} records its checkpoint counts"
        return None

    def _index_existing(self) -> None:
        if self.records == 0:
            return
        rows = np.memmap(self.directory / ROWS_FILE, dtype=RECORD, mode="r", shape=(self.records,))
        for start in range(0, self.records, 65536):
            chunk = rows[start : start + 65536]
            columns = zip(chunk["sha256"], chunk["updated_ms"], chunk["label"], strict=True)
            for offset, (digest, updated, label) in enumerate(columns):
                self._index[bytes(digest)] = (start + offset, int(updated), int(label))
        del rows

    def add(
        self, image: bytes, label: int, predicted: int, model_version: int, updated_ms: int
    ) -> tuple[str, bool]:
        """Store one labelled input: ("new" | "kept" (a newer label is held) | "replaced", labels differ)."""
        digest = image_hash(image)
        record = np.zeros(1, dtype=RECORD)
        record[0] = (
            digest,
            np.frombuffer(image, dtype=np.uint8),
            label,
            predicted,
            model_version,
            updated_ms,
        )
        held = self._index.get(digest)
        if held is None:
            self._file.seek(0, os.SEEK_END)
            self._file.write(record.tobytes())
            self._index[digest] = (self.records, updated_ms, label)
            self.records += 1
            return "new", False
        position, held_ms, held_label = held
        if updated_ms <= held_ms:
            return "kept", held_label != label
        self._file.seek(position * RECORD.itemsize)
        self._file.write(record.tobytes())
        self._index[digest] = (position, updated_ms, label)
        return "replaced", held_label != label

    def checkpoint(self, **state) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self.state = {**self.state, **state, "records": self.records}
        write_json_atomic(self.directory / STATE_FILE, self.state)

    def rows(self) -> np.ndarray:
        self._file.flush()
        if self.records == 0:
            return np.zeros(0, dtype=RECORD)
        return np.memmap(self.directory / ROWS_FILE, dtype=RECORD, mode="r", shape=(self.records,))

    def close(self) -> None:
        self._file.close()

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def warnings_for(per_digit: dict[str, list[int]], total: int, min_labels: int) -> list[str]:
    """What makes a snapshot a weak yardstick: too few labels, a digit absent from a side."""
    found = []
    if total < min_labels:
        found.append(f"only {total} labelled images (fewer than {min_labels}): figures from it are noisy")
    for side in SIDES:
        missing = [str(d) for d in range(NUM_CLASSES) if per_digit[side][d] == 0]
        if missing:
            found.append(f"no {side} images of digit(s) {', '.join(missing)}")
    return found


def publish(
    rows: np.ndarray,
    root: Path,
    *,
    holdout_percent: int,
    min_labels: int,
    source: dict,
    window: dict,
    counts: dict,
    now: dt.datetime | None = None,
) -> tuple[Path, dict]:
    """Split `rows` (RECORD array), write the snapshot atomically under `root`: (its directory, manifest).
    A write that fails (a full disk, say) is a SnapshotError and leaves nothing behind."""
    root = Path(root)
    try:
        return _publish(rows, root, holdout_percent, min_labels, source, window, counts, now)
    except OSError as exc:
        raise SnapshotError(f"{root}: cannot write the snapshot ({exc.strerror or exc})") from None


def _publish(rows, root, holdout_percent, min_labels, source, window, counts, now) -> tuple[Path, dict]:
    root.mkdir(parents=True, exist_ok=True)
    created = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    holdout = np.fromiter((is_holdout(bytes(d), holdout_percent) for d in rows["sha256"]), bool, len(rows))
    order = np.argsort(rows["sha256"], kind="stable")  # a content order: the same rows give the same files
    tmp = root / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        per_digit: dict[str, list[int]] = {}
        files: dict[str, str] = {}
        for side, chosen in (("train", ~holdout), ("holdout", holdout)):
            picked = rows[order[chosen[order]]]
            labels = picked["label"].astype(np.uint8)
            per_digit[side] = np.bincount(labels, minlength=NUM_CLASSES).astype(int).tolist()
            path = tmp / f"{side}.npz"
            np.savez_compressed(
                path,
                images=picked["image"].reshape(-1, *IMAGE_SHAPE),
                labels=labels,
                predicted=picked["predicted"].astype(np.uint8),
                model_versions=picked["model_version"].astype(np.int64),
            )
            files[path.name] = _sha256_file(path)
        content_id = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:10]
        snapshot_id = f"{created.strftime('%Y%m%dT%H%M%SZ')}-{content_id}"
        total = len(rows)
        manifest = {
            "format": FORMAT,
            "id": snapshot_id,
            "created": created.isoformat(),
            "source": source,
            "window": window,
            "split": {"rule": SPLIT_RULE, "holdout_percent": holdout_percent},
            "rows": {
                **counts,
                "distinct": total,
                "train": int((~holdout).sum()),
                "holdout": int(holdout.sum()),
            },
            "per_digit": per_digit,
            "warnings": warnings_for(per_digit, total, min_labels),
            "files": {name: {"sha256": digest} for name, digest in sorted(files.items())},
        }
        write_json_atomic(tmp / MANIFEST_FILE, manifest)
        for path in tmp.iterdir():
            path.chmod(0o444)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(tmp)
        target = root / snapshot_id
        try:
            os.rename(tmp, target)
        except OSError as exc:
            raise SnapshotError(f"{target}: cannot publish the snapshot ({exc.strerror})") from None
        fsync_dir(root)
        return target, manifest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class Snapshot:
    path: Path
    manifest: dict
    train_images: np.ndarray
    train_labels: np.ndarray
    holdout_images: np.ndarray
    holdout_labels: np.ndarray

    @property
    def id(self) -> str:
        return self.manifest["id"]


def load_snapshot(path: Path) -> Snapshot:
    """Read a snapshot, checking its format, every file's sha256 against the manifest, and the arrays (a
    snapshot built by hand has matching checksums whatever it holds)."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SnapshotError(f"{path}: not a feedback snapshot (no {MANIFEST_FILE})") from None
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"{manifest_path}: unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SnapshotError(f"{manifest_path}: unknown snapshot format (expected format {FORMAT})")
    files = manifest.get("files")
    if not isinstance(manifest.get("id"), str) or not isinstance(files, dict):
        raise SnapshotError(f"{manifest_path}: malformed (no snapshot id or no files)")
    arrays = {}
    for side in SIDES:
        name = f"{side}.npz"
        entry = files.get(name)
        if not isinstance(entry, dict):
            raise SnapshotError(f"{manifest_path}: malformed (no sha256 for {name})")
        file = path / name
        if not file.is_file():
            raise SnapshotError(f"{file}: missing")
        if _sha256_file(file) != entry.get("sha256"):
            raise SnapshotError(f"{file}: sha256 differs from the manifest (altered or truncated)")
        arrays[side] = _read_side(file)
    return Snapshot(path, manifest, *arrays["train"], *arrays["holdout"])


def _read_side(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """A side's images and labels, checked as training uses them: uint8 [n, 28, 28], one integer 0-9 each."""
    try:
        with np.load(file, allow_pickle=False) as content:
            images, labels = content["images"], content["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise SnapshotError(f"{file}: not a snapshot array file with images and labels ({exc})") from None
    if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE or len(images) != len(labels):
        raise SnapshotError(f"{file}: images are not uint8 [n, 28, 28] with one label each")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise SnapshotError(f"{file}: labels must be integers 0-9, got {labels.dtype} {list(labels.shape)}")
    outside = labels[(labels < 0) | (labels >= NUM_CLASSES)]
    if len(outside):
        raise SnapshotError(
            f"{file}: labels must be integers 0-9, {len(outside)} are not (e.g. {int(outside[0])})"
        )
    return images, labels


@contextlib.contextmanager
def exclusive(root: Path):
    """One export at a time per snapshot root (an flock on `<root>/.export.lock`)."""
    import fcntl

    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / ".export.lock", "a")  # noqa: SIM115 - closed by the `with` below
    except OSError as exc:
        raise SnapshotError(f"{root}: cannot use as the snapshot directory ({exc.strerror})") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SnapshotError(f"{root}: another export is running (lock {root / '.export.lock'})") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

"""The four MNIST IDX files: reading (gzip or raw), checksum verification and the optional download.

Checksums are verified on the decompressed IDX content, so a file is accepted whether it is the canonical
`.gz`, a re-compressed copy or the raw IDX file. Every problem is a `DataError` naming the file.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.errors import DataError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801


@dataclass(frozen=True)
class IdxFile:
    name: str  # the canonical file name without `.gz`
    magic: int
    count: int
    sha256: (
        str  # of the decompressed IDX content (the canonical `.gz` files' own sums are in docs/training.md)
    )


FILES = {
    "train_images": IdxFile(
        "train-images-idx3-ubyte",
        IMAGES_MAGIC,
        60000,
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    "train_labels": IdxFile(
        "train-labels-idx1-ubyte",
        LABELS_MAGIC,
        60000,
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    "test_images": IdxFile(
        "t10k-images-idx3-ubyte",
        IMAGES_MAGIC,
        10000,
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    "test_labels": IdxFile(
        "t10k-labels-idx1-ubyte",
        LABELS_MAGIC,
        10000,
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
}


# A stratified subset of the same files, committed with the tests (tests/data/mnist-sample/, drawn by
# tests/mnist_sample.py, 300 training and 100 test images per digit): read from a directory like the full set,
# so the tests and a first try need no download (a download accepts only the full set).
SAMPLE_FILES = {
    "train_images": IdxFile(
        "train-images-idx3-ubyte",
        IMAGES_MAGIC,
        3000,
        "ff19ec6f9c3631e5dc7b5dcedb1348415b3062b4358bef81fc0e06fc64e6d8dc",
    ),
    "train_labels": IdxFile(
        "train-labels-idx1-ubyte",
        LABELS_MAGIC,
        3000,
        "bad5b78efe46f81af4962f0f17c44e9c55025f0e9f320de66af01b1460c01cff",
    ),
    "test_images": IdxFile(
        "t10k-images-idx3-ubyte",
        IMAGES_MAGIC,
        1000,
        "bae02ed02be7c51ab5acdb0f448aa23f634c7373d32b63f1101bb38f94c6701f",
    ),
    "test_labels": IdxFile(
        "t10k-labels-idx1-ubyte",
        LABELS_MAGIC,
        1000,
        "bd72be1f822b2a5ee7c229f5f835ab7ba95faeb7f7518197b366b43569d19406",
    ),
}
KNOWN_SETS = {"mnist": FILES, "mnist-sample": SAMPLE_FILES}


@dataclass(frozen=True)
class Mnist:
    train_images: np.ndarray  # uint8 [n, 28, 28]: 60000 in the full set
    train_labels: np.ndarray  # uint8 [n]
    test_images: np.ndarray  # uint8 [m, 28, 28]: 10000 in the full set
    test_labels: np.ndarray  # uint8 [m]
    checksums: dict[str, str]  # file name -> sha256 of the IDX content that was read
    dataset: str = "mnist"  # which of KNOWN_SETS it is ("unverified" when loaded with verify=False)


def parse_idx(content: bytes, *, expected_magic: int, source: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes (images: magic 0x803, count, rows, cols; labels: magic 0x801, count) into uint8."""
    dims = expected_magic & 0xFF
    header_size = 4 + 4 * dims
    if len(content) >= 4:
        (magic,) = struct.unpack(">I", content[:4])
        if magic != expected_magic:
            raise DataError(
                f"{source}: not an MNIST IDX file (magic 0x{magic:08x}, expected 0x{expected_magic:08x})"
            )
    if len(content) < header_size:
        raise DataError(f"{source}: truncated (only {len(content)} bytes, shorter than the IDX header)")
    shape = struct.unpack(f">{dims}I", content[4:header_size])
    size = int(np.prod(shape))
    payload = len(content) - header_size
    if payload < size:
        raise DataError(f"{source}: truncated ({payload} of {size} data bytes for shape {tuple(shape)})")
    if payload > size:
        raise DataError(f"{source}: {payload - size} unexpected trailing bytes after the IDX data")
    return np.frombuffer(content, dtype=np.uint8, offset=header_size).reshape(shape)


def read_content(path: Path) -> bytes:
    """The IDX bytes of `path`, decompressed when it is gzip (detected by its magic, not its name)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise DataError(f"{path}: truncated gzip stream") from None
    except (OSError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt gzip data ({exc})") from None


def find_file(data_dir: Path, spec: IdxFile) -> Path:
    """`<name>.gz` or the raw `<name>` inside data_dir (torchvision's `.idx3-ubyte` spelling accepted too)."""
    candidates = [spec.name + ".gz", spec.name, spec.name.replace("-idx", ".idx")]
    for candidate in candidates:
        path = data_dir / candidate
        if path.is_file():
            return path
    raise DataError(f"{data_dir / (spec.name + '.gz')}: file not found (nor the uncompressed {spec.name})")


def check_idx(path: Path, content: bytes, spec: IdxFile, *, verify: bool) -> tuple[np.ndarray, str]:
    """Parse one file's IDX content; returns the array and the sha256 of the content."""
    array = parse_idx(content, expected_magic=spec.magic, source=str(path))
    digest = hashlib.sha256(content).hexdigest()
    if verify and digest != spec.sha256:
        raise DataError(f"{path}: checksum mismatch (sha256 {digest[:16]}…, expected {spec.sha256[:16]}…)")
    if verify and array.shape[0] != spec.count:
        raise DataError(f"{path}: {array.shape[0]} records, expected {spec.count}")
    return array, digest


def load_mnist(data_dir: Path, *, verify: bool = True) -> Mnist:
    """Load the four files from data_dir, verified as one of KNOWN_SETS: the full set or the committed sample.

    The training images' checksum says which set the directory claims to be; every file must then match it.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: MNIST data directory not found (set --data-dir or MNIST_DATA_DIR)")
    paths = {key: find_file(data_dir, spec) for key, spec in FILES.items()}
    contents = {key: read_content(path) for key, path in paths.items()}
    train_digest = hashlib.sha256(contents["train_images"]).hexdigest()
    dataset = next(
        (name for name, s in KNOWN_SETS.items() if s["train_images"].sha256 == train_digest), "mnist"
    )
    files = KNOWN_SETS[dataset]
    arrays: dict[str, np.ndarray] = {}
    checksums: dict[str, str] = {}
    for key, spec in files.items():
        arrays[key], checksums[spec.name] = check_idx(paths[key], contents[key], spec, verify=verify)
    for split in ("train", "test"):
        labels, labels_path = arrays[f"{split}_labels"], paths[f"{split}_labels"]
        if len(labels) != len(arrays[f"{split}_images"]):
            raise DataError(
                f"{labels_path}: {len(labels)} labels for {len(arrays[f'{split}_images'])} images"
            )
        if labels.max() > 9:
            raise DataError(f"{labels_path}: labels outside 0-9")
    return Mnist(checksums=checksums, dataset=dataset if verify else "unverified", **arrays)


def download(
    mirror_url: str,
    cache_dir: Path,
    *,
    timeout_s: float = 60.0,
    progress: Callable[[str, int, int | None], None] | None = None,
    expected: dict[str, IdxFile] = FILES,
) -> Path:
    """Fetch the four `.gz` files from mirror_url into cache_dir (skipping verified ones); returns cache_dir.

    Each file is downloaded to a temporary name, its IDX content checked against ``expected``'s sha256 (the
    full set: the committed sample is only read locally, never accepted from a mirror under the full set's
    names) and only then renamed, so the cache never holds a partial or corrupt file under a real name.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    base = mirror_url if mirror_url.endswith("/") else mirror_url + "/"
    for spec in expected.values():
        target = cache_dir / (spec.name + ".gz")
        if target.is_file() and _content_sha256(target) == spec.sha256:
            continue
        url = base + spec.name + ".gz"
        fd, tmp_name = tempfile.mkstemp(prefix=".download-", dir=cache_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                _fetch(url, out, timeout_s=timeout_s, name=spec.name + ".gz", progress=progress)
            digest = _content_sha256(Path(tmp_name))
            if digest != spec.sha256:
                found = f"content sha256 {digest[:16]}…" if digest else "not an IDX or gzip'ed IDX file"
                raise DataError(f"{url}: checksum mismatch after download ({found})")
            os.replace(tmp_name, target)
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
    return cache_dir


def _fetch(url: str, out, *, timeout_s: float, name: str, progress) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            while chunk := response.read(1 << 16):
                out.write(chunk)
                if progress:
                    progress(name, len(chunk), total)
    except urllib.error.HTTPError as exc:
        raise DataError(f"{url}: download failed (HTTP {exc.code})") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DataError(f"{url}: download failed ({reason})") from None


def _content_sha256(path: Path) -> str | None:
    """sha256 of the file's IDX content (decompressed), None when it cannot be read as such."""
    try:
        return hashlib.sha256(read_content(path)).hexdigest()
    except DataError:
        return None

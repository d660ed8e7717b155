"""MNIST IDX reading, checksum verification and the --download path (against a real local HTTP server)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import re
import shutil
import struct
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from tests import mnist_sample
from training import data
from training.errors import DataError


def idx_bytes(array: np.ndarray) -> bytes:
    magic = data.IMAGES_MAGIC if array.ndim == 3 else data.LABELS_MAGIC
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)


def test_parse_idx_images_and_labels(images):
    parsed = data.parse_idx(idx_bytes(images), expected_magic=data.IMAGES_MAGIC)
    assert parsed.dtype == np.uint8 and parsed.shape == (3, 28, 28)
    np.testing.assert_array_equal(parsed, images)
    labels = np.array([7, 2, 1], dtype=np.uint8)
    np.testing.assert_array_equal(data.parse_idx(idx_bytes(labels), expected_magic=data.LABELS_MAGIC), labels)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_read_content_accepts_raw_and_gzip(tmp_path, images, compress):
    content = idx_bytes(images)
    path = tmp_path / "file"
    path.write_bytes(gzip.compress(content) if compress else content)
    assert data.read_content(path) == content


@pytest.mark.parametrize(
    ("cut", "message"),
    [(10, "shorter than the IDX header"), (16 + 100, "truncated (100 of 2352 data bytes")],
    ids=["header", "data"],
)
def test_truncated_idx_is_a_clear_error(images, cut, message):
    with pytest.raises(DataError, match=r"^some-file: .*" + message.replace("(", r"\(")):
        data.parse_idx(idx_bytes(images)[:cut], expected_magic=data.IMAGES_MAGIC, source="some-file")


def test_trailing_bytes_are_an_error(images):
    with pytest.raises(DataError, match="trailing bytes"):
        data.parse_idx(idx_bytes(images) + b"\0", expected_magic=data.IMAGES_MAGIC)


def test_wrong_magic_is_a_clear_error(images):
    labels_where_images_expected = idx_bytes(np.zeros(5, dtype=np.uint8))
    with pytest.raises(
        DataError, match=r"f: not an MNIST IDX file \(magic 0x00000801, expected 0x00000803\)"
    ):
        data.parse_idx(labels_where_images_expected, expected_magic=data.IMAGES_MAGIC, source="f")


def test_truncated_gzip_names_the_file(tmp_path, images):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(images))[:-20])
    with pytest.raises(DataError, match=f"^{path}: truncated gzip stream$"):
        data.read_content(path)


def test_the_committed_sample_loads_as_the_known_sample():
    mnist = data.load_mnist(mnist_sample.SAMPLE_DIR)
    assert mnist.dataset == "mnist-sample"
    assert mnist.train_images.shape == (3000, 28, 28) and mnist.test_images.shape == (1000, 28, 28)
    assert mnist.train_images.dtype == np.uint8
    assert mnist.train_labels[:10].tolist() == [8, 0, 0, 7, 8, 9, 4, 9, 9, 2]
    assert mnist.test_labels[:10].tolist() == [4, 0, 9, 7, 3, 7, 5, 5, 9, 7]
    assert np.bincount(mnist.train_labels).tolist() == [300] * 10
    assert np.bincount(mnist.test_labels).tolist() == [100] * 10
    assert mnist.checksums == {spec.name: spec.sha256 for spec in data.SAMPLE_FILES.values()}


def test_the_sample_readme_lists_every_file_with_its_checksums():
    readme = (mnist_sample.SAMPLE_DIR / "README.md").read_text()
    rows = {
        row[0]: row[1:]
        for row in re.findall(r"^\| (\S+\.gz) \| (\d+) \| (\d+) \| (\w+) \| (\w+) \|$", readme, re.M)
    }
    files = sorted(p.name for p in mnist_sample.SAMPLE_DIR.iterdir() if p.name != "README.md")
    assert sorted(rows) == files
    for key, spec in data.SAMPLE_FILES.items():
        path = mnist_sample.SAMPLE_DIR / (spec.name + ".gz")
        raw = path.read_bytes()
        records, size, gz_sha256, sha256 = rows[path.name]
        assert (int(records), int(size)) == (spec.count, len(raw)), key
        assert gz_sha256 == hashlib.sha256(raw).hexdigest(), key
        assert sha256 == spec.sha256 == hashlib.sha256(gzip.decompress(raw)).hexdigest(), key


def test_the_draw_is_stratified_in_canonical_order_and_stable():
    labels = np.random.default_rng(1).integers(0, 10, size=5000).astype(np.uint8)
    drawn = mnist_sample.draw(labels, "train", 30)
    assert drawn.tolist() == sorted(set(drawn.tolist()))
    assert np.bincount(labels[drawn], minlength=10).tolist() == [30] * 10
    np.testing.assert_array_equal(drawn, mnist_sample.draw(labels, "train", 30))
    # Fewer per digit keeps a prefix of each digit's ranking: the same images, not a new draw.
    assert set(mnist_sample.draw(labels, "train", 10).tolist()) <= set(drawn.tolist())
    assert set(mnist_sample.draw(labels, "t10k", 30).tolist()) != set(drawn.tolist())


def test_the_sample_is_drawn_again_from_the_full_set(tmp_path):
    """Needs the full set (MNIST_DATA_DIR); a clone alone has only the sample, so it is skipped there."""
    full = os.environ.get("MNIST_DATA_DIR")
    if not full or data.load_mnist(Path(full)).dataset != "mnist":
        pytest.skip("MNIST_DATA_DIR does not hold the full MNIST set")
    mnist_sample.write_sample(Path(full), tmp_path)
    for spec in data.SAMPLE_FILES.values():
        content = gzip.decompress((tmp_path / (spec.name + ".gz")).read_bytes())
        assert hashlib.sha256(content).hexdigest() == spec.sha256


def test_files_load_and_verify_as_their_known_set(mnist_dir):
    """The sample, or the full set when MNIST_DATA_DIR points at it."""
    mnist = data.load_mnist(mnist_dir)
    files = data.KNOWN_SETS[mnist.dataset]
    assert mnist.checksums == {spec.name: spec.sha256 for spec in files.values()}
    assert len(mnist.train_images) == files["train_images"].count
    assert len(mnist.test_labels) == files["test_labels"].count


def write_raw_files(directory: Path, *arrays: np.ndarray) -> None:
    """The four files (train images, train labels, test images, test labels), raw IDX."""
    for spec, array in zip(data.FILES.values(), arrays, strict=True):
        (directory / spec.name).write_bytes(idx_bytes(array))


def test_verify_false_loads_any_well_formed_files(tmp_path, images):
    write_raw_files(tmp_path, images, np.array([1, 2, 3]), images[:2], np.array([4, 5]))
    with pytest.raises(DataError, match="checksum mismatch"):
        data.load_mnist(tmp_path)
    mnist = data.load_mnist(tmp_path, verify=False)
    assert mnist.dataset == "unverified" and mnist.test_labels.tolist() == [4, 5]


def test_labels_and_images_must_agree_in_number(tmp_path, images):
    write_raw_files(tmp_path, images, np.array([1, 2]), images[:2], np.array([4, 5]))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: 2 labels for 3 images"):
        data.load_mnist(tmp_path, verify=False)


@pytest.fixture
def data_copy(tmp_path, mnist_dir) -> Path:
    """A writable copy of the four files, the labels uncompressed (raw IDX must be accepted too)."""
    copy = tmp_path / "mnist"
    copy.mkdir()
    for spec in data.FILES.values():
        source = mnist_dir / (spec.name + ".gz")
        if spec.magic == data.LABELS_MAGIC:
            (copy / spec.name).write_bytes(gzip.decompress(source.read_bytes()))
        else:
            shutil.copy(source, copy)
    return copy


def test_raw_and_gzip_files_mix(data_copy, mnist_dir):
    mnist = data.load_mnist(data_copy)
    assert mnist.checksums == data.load_mnist(mnist_dir).checksums


def test_wrong_checksum_names_the_file(data_copy):
    path = data_copy / "t10k-labels-idx1-ubyte"
    content = bytearray(path.read_bytes())
    content[-1] = (content[-1] + 1) % 10  # still a well-formed label file, just not the canonical one
    path.write_bytes(bytes(content))
    with pytest.raises(DataError, match=f"^{path}: checksum mismatch"):
        data.load_mnist(data_copy)


def test_missing_file_names_the_file(data_copy):
    (data_copy / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: file not found"):
        data.load_mnist(data_copy)


def test_missing_directory(tmp_path):
    with pytest.raises(DataError, match="MNIST data directory not found"):
        data.load_mnist(tmp_path / "nope")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture
def serve_dir():
    """Serve a directory over real HTTP on 127.0.0.1 and a free port; yields a function dir -> base URL."""
    servers = []

    def start(directory: Path) -> str:
        server = ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(directory))
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/mnist/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def mirror_root(tmp_path, mnist_dir) -> Path:
    root = tmp_path / "mirror"
    shutil.copytree(mnist_dir, root / "mnist")
    return root


@pytest.fixture
def mirror_set(mnist_dir) -> dict[str, data.IdxFile]:
    """The files the mirror serves (the committed sample unless MNIST_DATA_DIR is the full set)."""
    return data.KNOWN_SETS[data.load_mnist(mnist_dir).dataset]


def test_download_fetches_and_verifies(serve_dir, mirror_root, mirror_set, mnist_dir, tmp_path):
    url = serve_dir(mirror_root)
    cache = tmp_path / "cache"
    progress: dict[str, int] = {}

    def record(name, size, total):
        progress[name] = progress.get(name, 0) + size

    assert data.download(url, cache, progress=record, expected=mirror_set) == cache
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        spec.name + ".gz" for spec in data.FILES.values()
    )
    assert progress["train-images-idx3-ubyte.gz"] == (mnist_dir / "train-images-idx3-ubyte.gz").stat().st_size
    assert data.load_mnist(cache).checksums == data.load_mnist(mnist_dir).checksums

    # Verified files already in the cache are not fetched again.
    progress.clear()
    data.download(url, cache, progress=record, expected=mirror_set)
    assert progress == {}


def test_download_accepts_only_the_full_set(serve_dir, tmp_path):
    """The committed sample, served under the full set's names, is refused: it is only read locally."""
    mirror = tmp_path / "mirror"
    shutil.copytree(mnist_sample.SAMPLE_DIR, mirror / "mnist")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: checksum mismatch after download"):
        data.download(serve_dir(mirror), cache)
    assert not list(cache.iterdir())


def test_download_rejects_a_corrupt_mirror_file(serve_dir, mirror_root, mirror_set, tmp_path):
    served = mirror_root / "mnist" / "t10k-labels-idx1-ubyte.gz"
    served.chmod(0o644)
    served.write_bytes(gzip.compress(b"not the real labels"))
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: checksum mismatch after download"):
        data.download(serve_dir(mirror_root), cache, expected=mirror_set)
    assert not (cache / "t10k-labels-idx1-ubyte.gz").exists()
    assert not [p for p in cache.iterdir() if p.name.startswith(".download-")]


def test_download_reports_http_errors(serve_dir, tmp_path):
    url = serve_dir(tmp_path)  # nothing under /mnist/
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: download failed \(HTTP 404\)"):
        data.download(url, tmp_path / "cache")


def test_download_reports_unreachable_mirror(tmp_path):
    with pytest.raises(DataError, match="download failed"):
        data.download("http://127.0.0.1:9/mnist/", tmp_path / "cache", timeout_s=5)

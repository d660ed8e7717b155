"""MNIST IDX reading, checksum verification and the --download path (against a real local HTTP server)."""

from __future__ import annotations

import functools
import gzip
import shutil
import struct
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

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


def test_real_files_load_and_verify(mnist_dir):
    mnist = data.load_mnist(mnist_dir)
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.test_images.shape == (10000, 28, 28)
    assert mnist.train_images.dtype == np.uint8
    assert mnist.train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist.test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(mnist.test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert mnist.checksums == {spec.name: spec.sha256 for spec in data.FILES.values()}


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


def test_raw_and_gzip_files_mix(data_copy):
    mnist = data.load_mnist(data_copy)
    assert len(mnist.train_labels) == 60000


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


def test_download_fetches_and_verifies(serve_dir, mirror_root, tmp_path):
    url = serve_dir(mirror_root)
    cache = tmp_path / "cache"
    progress: dict[str, int] = {}

    def record(name, size, total):
        progress[name] = progress.get(name, 0) + size

    assert data.download(url, cache, progress=record) == cache
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        spec.name + ".gz" for spec in data.FILES.values()
    )
    assert progress["train-images-idx3-ubyte.gz"] == 9912422
    assert len(data.load_mnist(cache).train_images) == 60000

    # Verified files already in the cache are not fetched again.
    progress.clear()
    data.download(url, cache, progress=record)
    assert progress == {}


def test_download_rejects_a_corrupt_mirror_file(serve_dir, mirror_root, tmp_path):
    served = mirror_root / "mnist" / "t10k-labels-idx1-ubyte.gz"
    served.chmod(0o644)
    served.write_bytes(gzip.compress(b"not the real labels"))
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: checksum mismatch after download"):
        data.download(serve_dir(mirror_root), cache)
    assert not (cache / "t10k-labels-idx1-ubyte.gz").exists()
    assert not [p for p in cache.iterdir() if p.name.startswith(".download-")]


def test_download_reports_http_errors(serve_dir, tmp_path):
    url = serve_dir(tmp_path)  # nothing under /mnist/
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: download failed \(HTTP 404\)"):
        data.download(url, tmp_path / "cache")


def test_download_reports_unreachable_mirror(tmp_path):
    with pytest.raises(DataError, match="download failed"):
        data.download("http://127.0.0.1:9/mnist/", tmp_path / "cache", timeout_s=5)

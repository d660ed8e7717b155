"""The MNIST sample committed in tests/data/mnist-sample/, which every test trains and evaluates on.

    python -m tests.mnist_sample --from DIR [--to tests/data/mnist-sample]

draws it again from the full set in DIR (the four canonical IDX files). The draw needs no random generator, so
it gives the same files on any machine and any library version: for each split and digit, it keeps the images
whose canonical index has the smallest sha256 of `mnist-sample/<split>/<index>`, in canonical order, and
writes them as the same four IDX files, gzip-compressed with no name and time stamp in the header.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np

SAMPLE_DIR = Path(__file__).resolve().parent / "data" / "mnist-sample"
PER_DIGIT = {"train": 300, "t10k": 100}


def draw(labels: np.ndarray, split: str, per_digit: int) -> np.ndarray:
    """Canonical indices of the sample: per digit, the per_digit smallest hashes, sorted by index."""

    def rank(index: int) -> str:
        return hashlib.sha256(f"mnist-sample/{split}/{index}".encode()).hexdigest()

    chosen: list[int] = []
    for digit in range(10):
        indices = np.flatnonzero(labels == digit).tolist()
        chosen += sorted(indices, key=rank)[:per_digit]
    return np.array(sorted(chosen), dtype=np.int64)


def idx_bytes(array: np.ndarray) -> bytes:
    magic = 0x00000803 if array.ndim == 3 else 0x00000801
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_sample(full_dir: Path, target: Path) -> dict[str, np.ndarray]:
    """Write the four sample files into target; returns the canonical indices drawn per split."""
    from training.data import load_mnist

    full = load_mnist(full_dir)
    target.mkdir(parents=True, exist_ok=True)
    drawn = {}
    for split, images, labels in (
        ("train", full.train_images, full.train_labels),
        ("t10k", full.test_images, full.test_labels),
    ):
        drawn[split] = indices = draw(labels, split, PER_DIGIT[split])
        for kind, array in (("images-idx3", images[indices]), ("labels-idx1", labels[indices])):
            # mtime=0 and no file name: the bytes depend on the content only (and on zlib's level-9 output).
            gz = gzip.compress(idx_bytes(array), compresslevel=9, mtime=0)
            (target / f"{split}-{kind}-ubyte.gz").write_bytes(gz)
    return drawn


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.mnist_sample", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--from", dest="full_dir", type=Path, required=True, help="the full MNIST set")
    parser.add_argument("--to", type=Path, default=SAMPLE_DIR, help="default %(default)s")
    args = parser.parse_args()
    write_sample(args.full_dir, args.to)
    for path in sorted(args.to.glob("*.gz")):
        content = gzip.decompress(path.read_bytes())
        print(f"{path.name}  {path.stat().st_size}  {hashlib.sha256(path.read_bytes()).hexdigest()}")
        print(f"  IDX content {len(content)} bytes, sha256 {hashlib.sha256(content).hexdigest()}")


if __name__ == "__main__":
    main()

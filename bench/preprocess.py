"""Accuracy of the default model on realistic uploads, and the cost of the gateway's preprocessing.

    python -m bench.preprocess [--model-dir DIR] [--per-kind 2000] [--kinds canvas,photo] [--photos 36]

For each kind of upload in tests/uploads.py (MNIST test images drawn on canvases, photographed on paper, ...)
the same first N test images are turned into uploads, run through `gateway.preprocess.to_mnist` and classified
by the SavedModel's `serving_default` signature. Baselines measured in the same run: the model's accuracy on
the raw MNIST images (the ceiling the preprocessing should keep), and the time Pillow alone takes to decode
each upload to grey (the floor the preprocessing adds to). Goals: >= 99% overall, >= 98.5% for every kind.

Then real-size uploads, fewer since each is megabytes (`--photos`, 0 skips them): 12 MP phone JPEGs (a third
upright, a third each with EXIF orientation 6 and 8) and ~4 MB PNG scans of the first test images, with
accuracy, the median and worst milliseconds per upload, and Pillow's full-scale decode of the same files as
the baseline (the preprocessing decodes big JPEGs at reduced scale). Goal: phone photos as accurate as the
raw images, and well under the gateway's 80 ms p50 budget for a photo.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench.data import mnist_dir
from bench.models import default_model_base
from training.contract import version_dirs

DEFAULT_MODEL_DIR = default_model_base()
GOAL_OVERALL, GOAL_PER_KIND = 0.99, 0.985


def find_saved_model(path: Path, model_name: str = "mnist") -> Path:
    """A SavedModel directory, a directory of versions, or a base path holding <model_name>/<versions>."""
    if (path / "saved_model.pb").exists():
        return path
    for candidate in (path, path / model_name):
        versions = version_dirs(candidate) if candidate.is_dir() else {}
        if versions:
            return versions[max(versions)]
    raise FileNotFoundError(f"no SavedModel under {path}")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def decode_only(data: bytes) -> float:
    """Seconds Pillow takes to decode an upload to grey: the baseline cost of reading any picture."""
    from PIL import Image

    started = time.perf_counter()
    Image.open(io.BytesIO(data)).convert("L").load()
    return time.perf_counter() - started


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from tqdm import tqdm

    from gateway.preprocess import to_mnist
    from tests import uploads
    from training.data import load_mnist

    model_path = find_saved_model(args.model_dir)
    serve = tf.saved_model.load(str(model_path)).signatures["serving_default"]

    def classify(images: np.ndarray) -> np.ndarray:
        out = [
            serve(image=tf.constant(images[i : i + 500]))["digit"].numpy() for i in range(0, len(images), 500)
        ]
        return np.concatenate(out)

    data = load_mnist(args.mnist_dir or mnist_dir())
    digits, labels = data.test_images[: args.per_kind], data.test_labels[: args.per_kind]
    raw_correct = classify(digits) == labels
    raw_accuracy = float(raw_correct.mean())
    kinds = args.kinds or list(uploads.KINDS)
    print(f"model {model_path}  raw MNIST accuracy on the same {len(digits)} test images: {raw_accuracy:.4f}")

    rows, correct_all = [], []
    for kind in kinds:
        rng = np.random.default_rng(args.seed)
        images = np.empty_like(digits)
        pre_s, decode_s, sizes = [], [], []
        for i, digit in enumerate(tqdm(digits, desc=f"{kind:>18}", unit="img", leave=False, file=sys.stderr)):
            upload = uploads.make_upload(kind, digit, rng)
            decode_s.append(decode_only(upload))
            started = time.perf_counter()
            images[i] = to_mnist(upload).image
            pre_s.append(time.perf_counter() - started)
            sizes.append(len(upload))
        correct = classify(images) == labels
        correct_all.append(correct)
        rows.append(
            (
                kind,
                float(correct.mean()),
                int((raw_correct & ~correct).sum()),
                1000 * statistics.median(pre_s),
                1000 * percentile(pre_s, 95),
                1000 * statistics.median(decode_s),
                statistics.median(sizes) / 1024,
            )
        )

    header = (
        f"{'kind':<20}{'accuracy':>9}{'vs raw':>8}{'lost':>6}{'pre p50 ms':>12}{'pre p95 ms':>12}"
        f"{'decode p50':>12}{'pre/decode':>11}{'KiB p50':>9}"
    )
    print(header)
    print("-" * len(header))
    for kind, accuracy, lost, p50, p95, decode, kib in rows:
        print(
            f"{kind:<20}{accuracy:>9.4f}{(accuracy - raw_accuracy) * 100:>+8.2f}{lost:>6}"
            f"{p50:>12.2f}{p95:>12.2f}{decode:>12.2f}{p50 / max(decode, 1e-6):>11.1f}{kib:>9.1f}"
        )
    overall = float(np.concatenate(correct_all).mean())
    worst = min(rows, key=lambda r: r[1])
    print("-" * len(header))
    print(f"{'overall':<20}{overall:>9.4f}{(overall - raw_accuracy) * 100:>+8.2f}")
    print(
        f"goals: overall {overall:.4f} >= {GOAL_OVERALL} {'met' if overall >= GOAL_OVERALL else 'MISSED'}; "
        f"worst kind {worst[0]} {worst[1]:.4f} >= {GOAL_PER_KIND} "
        f"{'met' if worst[1] >= GOAL_PER_KIND else 'MISSED'}"
    )
    if args.photos:
        real_size_uploads(args.photos, digits, labels, raw_correct, classify)
    return 0


def real_size_uploads(count: int, digits, labels, raw_correct, classify) -> None:
    """Phone photos and scans: accuracy and cost per upload (CPU time: the machine is shared)."""
    from gateway.preprocess import to_mnist
    from tests import uploads

    kinds = {
        "phone upright": lambda digit, rng: uploads.phone_photo(digit, rng),
        "phone EXIF 6": lambda digit, rng: uploads.phone_photo(digit, rng, orientation=6),
        "phone EXIF 8": lambda digit, rng: uploads.phone_photo(digit, rng, orientation=8),
        "PNG scan": uploads.png_scan,
    }
    rng = np.random.default_rng(7)
    per_kind = max(1, count // len(kinds))
    header = (
        f"{'real-size upload':<20}{'n':>4}{'accuracy':>9}{'raw':>7}{'pre p50 ms':>12}{'pre max ms':>12}"
        f"{'full decode p50':>17}{'MB p50':>8}"
    )
    print()
    print(header)
    print("-" * len(header))
    for kind, make in kinds.items():
        images = np.empty((per_kind, 28, 28), dtype=np.uint8)
        pre_ms, decode_ms, sizes = [], [], []
        for i in range(per_kind):
            data = make(digits[i], rng)
            started = time.process_time()
            images[i] = to_mnist(data, max_pixels=40_000_000).image
            pre_ms.append(1000 * (time.process_time() - started))
            started = time.process_time()
            decode_only(data)
            decode_ms.append(1000 * (time.process_time() - started))
            sizes.append(len(data) / 1e6)
        accuracy = float((classify(images) == labels[:per_kind]).mean())
        raw = float(raw_correct[:per_kind].mean())
        print(
            f"{kind:<20}{per_kind:>4}{accuracy:>9.4f}{raw:>7.3f}{statistics.median(pre_ms):>12.1f}"
            f"{max(pre_ms):>12.1f}{statistics.median(decode_ms):>17.1f}{statistics.median(sizes):>8.2f}"
        )
    print("-" * len(header))


def main(argv: list[str] | None = None) -> int:
    from tests import uploads

    parser = argparse.ArgumentParser(prog="python -m bench.preprocess", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="SavedModel or base path")
    parser.add_argument("--mnist-dir", type=Path, help="default MNIST_DATA_DIR, else downloaded")
    parser.add_argument("--per-kind", type=int, default=2000, help="test images per kind (default 2000)")
    parser.add_argument("--kinds", type=lambda s: s.split(","), help=f"subset of {','.join(uploads.KINDS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--photos", type=int, default=36, help="real-size uploads (default 36; 0: none)")
    args = parser.parse_args(argv)
    if args.kinds and set(args.kinds) - set(uploads.KINDS):
        parser.error(f"unknown kind(s): {', '.join(sorted(set(args.kinds) - set(uploads.KINDS)))}")
    if not 1 <= args.per_kind <= 10000:
        parser.error("--per-kind must be between 1 and 10000")
    if not 0 <= args.photos <= min(400, args.per_kind):
        parser.error("--photos must be between 0 and min(400, --per-kind)")
    if args.model_dir is None:
        parser.error("no default model found: `make up` trains one; or BENCH_MODEL_BASE_PATH, --model-dir")
    try:
        find_saved_model(args.model_dir)
    except FileNotFoundError as exc:
        parser.error(f"{exc} (train one with mnist-train, or pass --model-dir)")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())

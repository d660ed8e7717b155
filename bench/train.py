"""The default full training on this machine: test accuracy and training seconds, against a baseline.

    python -m bench.train [--model-base-path DIR] [--data-dir DIR] [--epochs N] [--no-baseline]

Runs `mnist-train` with its defaults as a user would (a subprocess, progress on stderr), exporting into
`--model-base-path` (default: a temporary directory, removed afterwards), then reads the exported version's
metrics.json. Baseline, measured in the same run: one epoch of the same network without augmentation, so the
ratio shows what the augmentation costs per epoch. Not a test: nothing is asserted except the exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.data import mnist_dir

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_default_training(base_path: Path, data_dir: Path, epochs: int | None) -> tuple[Path, dict, float]:
    command = [
        sys.executable,
        "-m",
        "training.cli",
        "--data-dir",
        str(data_dir),
        "--model-base-path",
        str(base_path),
    ]
    if epochs:
        command += ["--epochs", str(epochs)]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, check=False)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"bench.train: mnist-train failed with exit code {result.returncode}")
    match = re.search(r"^exported (.+)$", result.stdout, re.MULTILINE)
    if not match:
        sys.exit("bench.train: mnist-train did not print the exported version")
    version_dir = Path(match.group(1))
    metrics = json.loads((version_dir / "assets.extra" / "metrics.json").read_text())
    return version_dir, metrics, wall


def baseline_epoch_seconds(data_dir: Path) -> float:
    """Seconds for one epoch of the same CNN and batch size, without augmentation."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from training.cli import import_tensorflow

    import_tensorflow()
    from training.data import load_mnist
    from training.hyperparams import HyperParams
    from training.model import train

    mnist = load_mnist(data_dir)
    _, result = train(HyperParams(epochs=1, augment=False), mnist.train_images, mnist.train_labels, verbose=0)
    return result.seconds


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-base-path", type=Path, help="export here (kept); default a temporary dir")
    parser.add_argument("--data-dir", type=Path, help="MNIST files (default MNIST_DATA_DIR, else downloaded)")
    parser.add_argument("--epochs", type=int, help="override the default number of epochs")
    parser.add_argument("--no-baseline", action="store_true", help="skip the one-epoch baseline")
    args = parser.parse_args()
    args.data_dir = args.data_dir or mnist_dir()

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        base = args.model_base_path or Path(tmp)
        version_dir, metrics, wall = run_default_training(base, args.data_dir, args.epochs)
        epochs = metrics["hyper_parameters"]["epochs"]
        per_epoch = metrics["train_seconds"] / epochs
        print(f"version               {version_dir if args.model_base_path else '(temporary)'}")
        print(f"test_accuracy         {metrics['test_accuracy']:.4f}  (target >= 0.9930)")
        print(
            f"train_seconds         {metrics['train_seconds']:.0f}  ({epochs} epochs, {per_epoch:.1f} s each)"
        )
        print(f"wall_seconds          {wall:.0f}  (mnist-train end to end: load, train, evaluate, export)")
        print(f"cpu_count             {os.cpu_count()}")
        if not args.no_baseline:
            baseline = baseline_epoch_seconds(args.data_dir)
            print(f"baseline_epoch_secs   {baseline:.1f}  (same CNN, no augmentation)")
            print(f"epoch_ratio           {per_epoch / baseline:.2f}x  (default epoch / baseline epoch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Retraining on feedback at full size: does a new handwriting get learnt without losing MNIST accuracy?

    python -m bench.retrain [--data-dir DIR] [--epochs N] [--stream N] [--weights 1,2,4] [--out DIR]

1. The baseline: `mnist-train` with its defaults on the full MNIST training set (the `stable` version).
2. A stream of `--stream` MNIST training digits drawn in the new handwriting (tests/handwriting.py,
   "thick-slanted-rotated"), put through the gateway's preprocessing (what the model would see and the
   feedback table would hold), frozen as a feedback snapshot (training/snapshot.py: 80/20 by image hash).
3. For each `--weights` value: `mnist-train --feedback SNAPSHOT --baseline 1 --feedback-weight W` (the same
   defaults otherwise), then the quality gate against version 1 (MODEL_MAX_ACCURACY_DROP 0.002).

Prints MNIST test accuracy and holdout accuracy per version, and the gate's verdict. Every training is a real
`mnist-train` subprocess; CPU seconds are the children's (os.times), wall seconds are given beside them.
Not a test: nothing is asserted except the exit status.
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

import numpy as np

from bench.data import mnist_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
STYLE = "thick-slanted-rotated"


def train(base: Path, data_dir: Path, epochs: int | None, *extra: str) -> tuple[Path, dict, float, float]:
    command = [
        sys.executable,
        "-m",
        "training.cli",
        "--data-dir",
        str(data_dir),
        "--model-base-path",
        str(base),
    ]
    command += ["--epochs", str(epochs)] if epochs else []
    before, started = os.times(), time.perf_counter()
    result = subprocess.run([*command, *extra], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, check=False)
    after, wall = os.times(), time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"bench.retrain: mnist-train failed with exit code {result.returncode}")
    version_dir = Path(re.search(r"^exported (.+)$", result.stdout, re.MULTILINE).group(1))
    metrics = json.loads((version_dir / "assets.extra" / "metrics.json").read_text())
    cpu = (after.children_user + after.children_system) - (before.children_user + before.children_system)
    return version_dir, metrics, cpu, wall


def make_snapshot(data_dir: Path, root: Path, count: int) -> Path:
    from gateway.preprocess import to_mnist
    from tests.handwriting import styled_upload
    from training.data import load_mnist
    from training.snapshot import RECORD, image_hash, publish

    data = load_mnist(data_dir)
    order = np.random.default_rng(7).permutation(len(data.train_images))[:count]
    rng = np.random.default_rng(0)
    rows = np.zeros(count, dtype=RECORD)
    for n, i in enumerate(order):
        seen = to_mnist(styled_upload(data.train_images[i], STYLE, rng)).image.astype(np.uint8)
        label = int(data.train_labels[i])
        rows[n] = (image_hash(seen.tobytes()), seen.reshape(-1), label, 255, 1, n)
    _, unique = np.unique(rows["sha256"], return_index=True)
    path, _ = publish(
        rows[np.sort(unique)],
        root,
        holdout_percent=20,
        min_labels=200,
        source={"bench": f"{STYLE} drawings of MNIST training digits"},
        window={},
        counts={"read": count},
    )
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.retrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, help="MNIST files (default MNIST_DATA_DIR or the download)")
    parser.add_argument("--epochs", type=int, help="epochs of every training (default mnist-train's)")
    parser.add_argument("--stream", type=int, default=3000, help="feedback images in the new style")
    parser.add_argument("--weights", default="1", help="comma-separated --feedback-weight values to try")
    parser.add_argument("--out", type=Path, help="keep the models and snapshot here (default: temporary)")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or mnist_dir()
    with tempfile.TemporaryDirectory(prefix="bench-retrain-") as scratch:
        out = args.out or Path(scratch)
        base = out / "models"
        snapshot = make_snapshot(data_dir, out / "feedback-snapshots", args.stream)
        print(f"snapshot {snapshot.name}: {args.stream} drawings in the style {STYLE!r}", flush=True)
        stable, metrics, cpu, wall = train(base, data_dir, args.epochs)
        print(
            f"version {stable.name} (MNIST only): test {metrics['test_accuracy']:.4f}  "
            f"cpu {cpu:.0f} s  wall {wall:.0f} s",
            flush=True,
        )
        rows = []
        for weight in [float(w) for w in args.weights.split(",")]:
            feedback_flags = ["--feedback", str(snapshot), "--baseline", stable.name]
            feedback_flags += ["--feedback-weight", str(weight)]
            version, metrics, cpu, wall = train(base, data_dir, args.epochs, *feedback_flags)
            fb = metrics["feedback"]
            gate = subprocess.run(
                [sys.executable, "-c", GATE, str(base / "mnist"), version.name, stable.name],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                check=False,
            )
            rows.append((weight, metrics, fb, gate.stdout.strip() or gate.stderr.strip(), cpu, wall))
            print(
                f"version {version.name} (feedback weight {weight:g}): test {metrics['test_accuracy']:.4f} "
                f"(baseline {fb['baseline']['test_accuracy']:.4f}), holdout {fb['holdout_accuracy']:.4f} "
                f"(baseline {fb['baseline']['holdout_accuracy']:.4f}, {fb['holdout_samples']} images)  "
                f"cpu {cpu:.0f} s  wall {wall:.0f} s\n  gate: {rows[-1][3]}",
                flush=True,
            )
    return 0


GATE = """
import sys
from pathlib import Path
from serving.ops import errors, versions
try:
    print(versions.quality_gate(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), min_accuracy=0.99,
                                force=False))
except errors.QualityGateFailed as refusal:
    print(refusal.message)
"""


if __name__ == "__main__":
    sys.exit(main())

"""Retraining on feedback: from scratch (as `mnist-train --feedback` does) or fine-tuning the stable model?

    python -m bench.finetune [--data-dir DIR] [--stream N] [--fine-tune-epochs 1,2] [--epochs 8] [--seed 0]

In one process, with mnist-train's default hyper-parameters and the full MNIST set:
1. the stable model: trained on MNIST only;
2. bench.retrain's feedback snapshot: `--stream` MNIST training digits in a new handwriting, 80/20 by hash;
3. from scratch: a new model trained on MNIST plus the snapshot's train side (weight 1), as `--feedback` does;
4. fine-tuned: a copy of the stable model trained further on the same data, for each `--fine-tune-epochs`
   value, with the same schedule shape at a tenth of the learning rate.

Prints MNIST test and holdout accuracy and the CPU seconds of each training (this process's, TensorFlow's
threads included). Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.data import mnist_dir
from bench.retrain import STYLE, make_snapshot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.finetune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, help="MNIST files (default MNIST_DATA_DIR or the download)")
    parser.add_argument("--stream", type=int, default=3000, help="feedback images in the new style")
    parser.add_argument("--fine-tune-epochs", default="1,2", help="comma-separated epochs of fine-tuning")
    parser.add_argument("--epochs", type=int, default=8, help="epochs from scratch (default mnist-train's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data_dir = args.data_dir or mnist_dir()

    from training.quiet import import_tensorflow, wants_quiet

    import_tensorflow(quiet=wants_quiet(verbose=False))  # TF_CPP_MIN_LOG_LEVEL set: TensorFlow's own logs
    from training.data import load_mnist
    from training.hyperparams import HyperParams
    from training.model import compile_model, predict_probabilities, seed_everything, train
    from training.snapshot import load_snapshot

    data = load_mnist(data_dir)
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as scratch:
        snapshot = load_snapshot(make_snapshot(data_dir, Path(scratch), args.stream))
    print(
        f"snapshot: {len(snapshot.train_labels)} train, {len(snapshot.holdout_labels)} holdout drawings "
        f"in the style {STYLE!r}",
        flush=True,
    )
    hp = HyperParams(seed=args.seed, epochs=args.epochs)
    feedback = (snapshot.train_images, snapshot.train_labels, 1.0)

    def scores(model) -> str:
        test = (predict_probabilities(model, data.test_images).argmax(1) == data.test_labels).mean()
        holdout = predict_probabilities(model, snapshot.holdout_images).argmax(1) == snapshot.holdout_labels
        return f"MNIST test {test:.4f}  holdout {holdout.mean():.4f}"

    def timed(what: str, fit) -> object:
        cpu, wall = time.process_time(), time.perf_counter()
        model = fit()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print(f"{what:<38} {scores(model)}  cpu {cpu:.0f} s  wall {wall:.0f} s", flush=True)
        return model

    stable = timed(
        "stable (MNIST only)", lambda: train(hp, data.train_images, data.train_labels, verbose=0)[0]
    )
    timed(
        "from scratch (MNIST + feedback)",
        lambda: train(hp, data.train_images, data.train_labels, extra=feedback, verbose=0)[0],
    )
    images = np.concatenate([data.train_images, snapshot.train_images])
    labels = np.concatenate([data.train_labels, snapshot.train_labels])
    weights = np.ones(len(labels), np.float32)
    for epochs in [int(e) for e in args.fine_tune_epochs.split(",")]:

        def fine_tune(epochs: int = epochs):
            import keras

            seed_everything(hp.seed)
            model = keras.models.clone_model(stable)
            model.set_weights(stable.get_weights())
            tuned = dataclasses.replace(hp, epochs=epochs, learning_rate=hp.learning_rate / 10)
            compile_model(model, tuned, int(np.ceil(len(labels) / hp.batch_size)))
            model.fit(
                images, labels, sample_weight=weights, batch_size=hp.batch_size, epochs=epochs, verbose=0
            )
            return model

        timed(f"fine-tuned stable, {epochs} epoch(s), lr/10", fine_tune)
    return 0


if __name__ == "__main__":
    sys.exit(main())

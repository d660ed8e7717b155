"""`mnist-train`: train, evaluate and export the next model version; `evaluate` and `inspect` a version.

    mnist-train --data-dir D --model-base-path P [--model-name mnist] [--epochs N] [--batch-size N]
                [--max-train-samples N] [--seed N] [--download]
    mnist-train evaluate <version dir> [--data-dir D] [--json]
    mnist-train inspect <version dir>
    (each also takes --verbose)

Every failure is one line on stderr and a non-zero exit; tensorflow is imported only after arguments and data
have been checked, with TensorFlow's C++ logs kept off the terminal unless --verbose (training/quiet.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from training import settings as settings_module
from training.errors import TrainingError

PROG = "mnist-train"
SUBCOMMANDS = ("train", "evaluate", "inspect")
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error instead of the usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _model_name(text: str) -> str:
    if not MODEL_NAME_RE.match(text):
        raise argparse.ArgumentTypeError(f"invalid model name {text!r} (letters, digits, '_', '-', '.')")
    return text


def build_parsers(env: settings_module.Settings) -> dict[str, argparse.ArgumentParser]:
    from training.hyperparams import HyperParams

    defaults = HyperParams()
    train = _Parser(
        prog=PROG,
        description="Train the MNIST CNN, evaluate it on the test set, export it as the next model version.",
        epilog=(
            "Other commands: `mnist-train evaluate <version dir>` re-scores an exported version, "
            "`mnist-train inspect <version dir>` prints its signature. "
            "Environment: MNIST_DATA_DIR, MODEL_BASE_PATH, MODEL_NAME, MNIST_MIRROR_URL, MNIST_CACHE_DIR."
        ),
    )
    train.add_argument(
        "--data-dir",
        type=Path,
        default=env.data_dir,
        help="directory with the four MNIST IDX files, .gz or raw (env MNIST_DATA_DIR; "
        "with --download, where to download them, default the cache MNIST_CACHE_DIR)",
    )
    train.add_argument(
        "--model-base-path",
        type=Path,
        default=env.model_base_path,
        help="base directory of the served models; exports <base>/<model-name>/<version>/ "
        "(env MODEL_BASE_PATH)",
    )
    train.add_argument("--model-name", type=_model_name, default=env.model_name, help="env MODEL_NAME")
    default = "default %(default)s"
    train.add_argument("--epochs", type=_positive_int, default=defaults.epochs, help=default)
    train.add_argument("--batch-size", type=_positive_int, default=defaults.batch_size, help=default)
    train.add_argument("--max-train-samples", type=_positive_int, help="train on the first N images only")
    train.add_argument("--seed", type=_non_negative_int, default=defaults.seed, help=default)
    train.add_argument(
        "--download",
        action="store_true",
        help="fetch missing MNIST files from the mirror (env MNIST_MIRROR_URL), verifying checksums",
    )
    train.add_argument("--mirror-url", default=env.mirror_url, help=argparse.SUPPRESS)

    evaluate = _Parser(prog=f"{PROG} evaluate", description="Re-score an exported version on the test set.")
    evaluate.add_argument("version_dir", type=Path, help="an exported version, e.g. models/mnist/3")
    evaluate.add_argument("--data-dir", type=Path, default=env.data_dir, help="MNIST files (MNIST_DATA_DIR)")
    evaluate.add_argument("--json", action="store_true", help="print the full metrics as JSON")

    inspect = _Parser(
        prog=f"{PROG} inspect",
        description="Print an exported version's signatures (as saved_model_cli show --all) and its metrics.",
    )
    inspect.add_argument("version_dir", type=Path, help="an exported version, e.g. models/mnist/3")
    for parser in (train, evaluate, inspect):
        parser.add_argument(
            "--verbose",
            action="store_true",
            help="show TensorFlow's C++ logs and warnings (also shown when TF_CPP_MIN_LOG_LEVEL is set)",
        )
    return {"train": train, "evaluate": evaluate, "inspect": inspect}


def import_tensorflow(args: argparse.Namespace) -> None:
    from training.quiet import import_tensorflow as import_quietly
    from training.quiet import wants_quiet

    try:
        import_quietly(quiet=wants_quiet(args.verbose))
    except ImportError as exc:
        raise TrainingError(f"tensorflow is not installed ({exc}); install the 'training' extra") from None


def _resolve_data_dir(args: argparse.Namespace, env: settings_module.Settings) -> Path:
    from training import data

    if args.download:
        target = args.data_dir or env.cache_dir
        print(f"Downloading MNIST from {args.mirror_url} into {target}", file=sys.stderr)
        return data.download(args.mirror_url, target, progress=_download_progress())
    if args.data_dir is None:
        raise TrainingError(
            "no MNIST data directory: pass --data-dir D (or set MNIST_DATA_DIR), or use --download"
        )
    return args.data_dir


def _download_progress():
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def update(name: str, size: int, total: int | None) -> None:
        if name not in bars:
            bars[name] = tqdm(total=total, desc=name, unit="B", unit_scale=True, leave=False, file=sys.stderr)
        bars[name].update(size)

    return update


def run_train(args: argparse.Namespace, env: settings_module.Settings) -> int:
    from training.data import load_mnist
    from training.hyperparams import HyperParams

    if args.model_base_path is None:
        raise TrainingError("no model base path: pass --model-base-path P (or set MODEL_BASE_PATH)")
    data = load_mnist(_resolve_data_dir(args, env))
    model_dir = args.model_base_path / args.model_name
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingError(f"{model_dir}: cannot create the model directory ({exc.strerror})") from None
    if not os.access(model_dir, os.W_OK):
        raise TrainingError(f"{model_dir}: not writable")
    hp = HyperParams(
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        max_train_samples=args.max_train_samples,
    )
    import_tensorflow(args)
    from training.export import export_version
    from training.model import train
    from training.report import evaluate_model, report_files

    n = min(len(data.train_images), hp.max_train_samples or len(data.train_images))
    print(
        f"Training on {n} images, {hp.epochs} epochs, batch {hp.batch_size}, seed {hp.seed}", file=sys.stderr
    )
    # Progress goes to stderr (stdout carries only the result): a live bar on a TTY, else one line per epoch.
    verbose = 1 if sys.stderr.isatty() else 2
    # The test set gives the per-epoch curves only: no early stopping, no model selection on it.
    test = (data.test_images, data.test_labels)
    with contextlib.redirect_stdout(sys.stderr):
        model, result = train(hp, data.train_images, data.train_labels, validation=test, verbose=verbose)
    metrics = evaluate_model(model, data, hp, result)
    version_dir = export_version(
        model,
        args.model_base_path,
        args.model_name,
        metrics=metrics,
        warmup_images=data.test_images[:32],
        extra_files=report_files(metrics),
    )
    print(f"test_accuracy {metrics['test_accuracy']:.4f}  train_seconds {metrics['train_seconds']:.0f}")
    print(f"exported {version_dir}")
    return 0


def run_evaluate(args: argparse.Namespace, env: settings_module.Settings) -> int:
    from training.artifact import check_version_dir, predict_with_signature, read_metrics
    from training.data import load_mnist
    from training.report import classification_metrics

    check_version_dir(args.version_dir)
    if args.data_dir is None:
        raise TrainingError("no MNIST data directory: pass --data-dir D (or set MNIST_DATA_DIR)")
    data = load_mnist(args.data_dir)
    import_tensorflow(args)
    probabilities = predict_with_signature(args.version_dir, data.test_images)
    scores = classification_metrics(data.test_labels, probabilities)
    recorded = (read_metrics(args.version_dir) or {}).get("test_accuracy")
    if args.json:
        print(json.dumps({**scores, "recorded_test_accuracy": recorded}, indent=2))
        return 0
    print(
        f"{args.version_dir}: test_accuracy {scores['test_accuracy']:.4f} ({scores['test_samples']} images)"
    )
    if recorded is not None:
        print(f"recorded at export: {recorded:.4f}")
    worst = sorted(scores["per_class"].items(), key=lambda item: item[1]["recall"])[:3]
    print("lowest recall: " + ", ".join(f"{digit} {s['recall']:.4f}" for digit, s in worst))
    return 0


def run_inspect(args: argparse.Namespace, env: settings_module.Settings) -> int:
    from training.artifact import check_version_dir, contract_violations, describe_signatures, read_metrics

    check_version_dir(args.version_dir)
    import_tensorflow(args)
    print(describe_signatures(args.version_dir))
    problems = contract_violations(args.version_dir)
    print()
    print("contract: ok" if not problems else "contract: VIOLATED: " + "; ".join(problems))
    metrics = read_metrics(args.version_dir)
    if metrics:
        fields = ("test_accuracy", "train_seconds", "created_at")
        print("metrics: " + ", ".join(f"{name} {metrics.get(name)}" for name in fields))
    return 0 if not problems else 1


COMMANDS = {"train": run_train, "evaluate": run_evaluate, "inspect": run_inspect}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "train"
    if argv and argv[0] in SUBCOMMANDS:
        command = argv.pop(0)
    env = settings_module.from_env()
    args = build_parsers(env)[command].parse_args(argv)
    try:
        return COMMANDS[command](args, env)
    except TrainingError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; no version was exported", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`mnist-train`: train, evaluate and export the next model version; `evaluate` and `inspect` a version.

    mnist-train --data-dir D --model-base-path P [--model-name mnist] [--epochs N] [--batch-size N]
                [--max-train-samples N] [--seed N] [--download]
                [--feedback SNAPSHOT|latest --baseline VERSION [--feedback-weight W]]
    mnist-train dataset export [--snapshot-dir D] [--since T] [--until T] [--page-size N]
                               [--holdout-percent P] [--min-labels N] [--max-pages N]
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
SUBCOMMANDS = ("train", "evaluate", "inspect", "dataset")
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


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1000:
        raise argparse.ArgumentTypeError(f"must be in (0, 1000], got {value}")
    return value


def _percent(text: str) -> int:
    value = _positive_int(text)
    if value > 99:
        raise argparse.ArgumentTypeError(f"must be 1-99, got {value}")
    return value


def build_parsers(env: settings_module.Settings) -> dict[str, argparse.ArgumentParser]:
    from training.feedback import DEFAULT_FEEDBACK_WEIGHT
    from training.feedback_export import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
    from training.hyperparams import HyperParams
    from training.snapshot import DEFAULT_HOLDOUT_PERCENT, DEFAULT_MIN_LABELS

    defaults = HyperParams()
    train = _Parser(
        prog=PROG,
        description="Train the MNIST CNN, evaluate it on the test set, export it as the next model version.",
        epilog=(
            "Other commands: `mnist-train evaluate <version dir>` re-scores an exported version, "
            "`mnist-train inspect <version dir>` prints its signature, "
            "`mnist-train dataset export` snapshots users' feedback labels from Cassandra. "
            "Environment: MNIST_DATA_DIR, MODEL_BASE_PATH, MODEL_NAME, MNIST_MIRROR_URL, MNIST_CACHE_DIR, "
            "FEEDBACK_SNAPSHOT_DIR."
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
        "--learning-rate",
        type=_positive_float,
        default=defaults.learning_rate,
        help="peak learning rate; " + default,
    )
    train.add_argument(
        "--no-augment", action="store_true", help="no random rotation/shift/zoom while training (quick runs)"
    )
    train.add_argument(
        "--download",
        action="store_true",
        help="fetch missing MNIST files from the mirror (env MNIST_MIRROR_URL), verifying checksums",
    )
    train.add_argument("--mirror-url", default=env.mirror_url, help=argparse.SUPPRESS)
    train.add_argument(
        "--feedback",
        metavar="SNAPSHOT",
        help="also train on this feedback snapshot's train side and score its holdout; `latest`: the newest "
        "under the snapshot directory (FEEDBACK_SNAPSHOT_DIR, default MODEL_BASE_PATH/feedback-snapshots)",
    )
    train.add_argument(
        "--baseline",
        metavar="VERSION",
        help="with --feedback: the version the new one would replace (the current stable), a version number "
        "or directory; scored on the same holdout and test images for the quality gate",
    )
    train.add_argument(
        "--feedback-weight",
        type=_positive_float,
        default=DEFAULT_FEEDBACK_WEIGHT,
        help="loss weight of a feedback image against 1 for an MNIST image (default %(default)s)",
    )
    train.add_argument("--snapshot-dir", type=Path, default=env.snapshot_dir, help=argparse.SUPPRESS)

    evaluate = _Parser(prog=f"{PROG} evaluate", description="Re-score an exported version on the test set.")
    evaluate.add_argument("version_dir", type=Path, help="an exported version, e.g. models/mnist/3")
    evaluate.add_argument("--data-dir", type=Path, default=env.data_dir, help="MNIST files (MNIST_DATA_DIR)")
    evaluate.add_argument("--json", action="store_true", help="print the full metrics as JSON")

    inspect = _Parser(
        prog=f"{PROG} inspect",
        description="Print an exported version's signatures (as saved_model_cli show --all) and its metrics.",
    )
    inspect.add_argument("version_dir", type=Path, help="an exported version, e.g. models/mnist/3")

    dataset = _Parser(
        prog=f"{PROG} dataset",
        description="Export users' feedback labels (Cassandra feedback_by_id: the input the model saw and "
        "the true digit) into an immutable snapshot: train.npz, holdout.npz, manifest.json. Resumable: run "
        "the same command again after an interruption. Cassandra from CASSANDRA_HOSTS, CASSANDRA_PORT, "
        "CASSANDRA_KEYSPACE, CASSANDRA_LOCAL_DC, CASSANDRA_USERNAME, CASSANDRA_PASSWORD.",
    )
    dataset.add_argument("action", choices=["export"])
    dataset.add_argument(
        "--snapshot-dir",
        type=Path,
        default=env.snapshot_dir,
        help="where snapshots go (env FEEDBACK_SNAPSHOT_DIR; default MODEL_BASE_PATH/feedback-snapshots)",
    )
    dataset.add_argument("--since", help="only labels given at or after this ISO-8601 time (UTC)")
    dataset.add_argument(
        "--until", help="only labels given before this time (default: when the export starts)"
    )
    dataset.add_argument(
        "--page-size",
        type=_positive_int,
        default=DEFAULT_PAGE_SIZE,
        help=f"rows per Cassandra request, at most {MAX_PAGE_SIZE} (default %(default)s)",
    )
    dataset.add_argument(
        "--holdout-percent",
        type=_percent,
        default=DEFAULT_HOLDOUT_PERCENT,
        help="share of images (by a hash of the image) kept out of training (default %(default)s)",
    )
    dataset.add_argument(
        "--min-labels",
        type=_positive_int,
        default=DEFAULT_MIN_LABELS,
        help="fewer labelled images than this: the snapshot says so (still written; default %(default)s)",
    )
    dataset.add_argument(
        "--max-pages",
        type=_positive_int,
        help="stop after N pages, keeping the checkpoint (the next run continues)",
    )
    for parser in (train, evaluate, inspect, dataset):
        parser.add_argument(
            "--verbose",
            action="store_true",
            help="show TensorFlow's C++ logs and warnings (also shown when TF_CPP_MIN_LOG_LEVEL is set)",
        )
    return {"train": train, "evaluate": evaluate, "inspect": inspect, "dataset": dataset}


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
    if bool(args.feedback) != bool(args.baseline):
        raise TrainingError("--feedback and --baseline go together (the holdout is scored for both versions)")
    data = load_mnist(_resolve_data_dir(args, env))
    model_dir = args.model_base_path / args.model_name
    feedback = baseline = None
    if args.feedback:
        from training.feedback import resolve_baseline, resolve_snapshot, snapshot_root

        root = snapshot_root(args.snapshot_dir, args.model_base_path) if args.feedback == "latest" else None
        feedback = resolve_snapshot(args.feedback, root)
        baseline = resolve_baseline(args.baseline, model_dir)
        for warning in feedback.manifest.get("warnings", []):
            print(f"warning: snapshot {feedback.id}: {warning}", file=sys.stderr)
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
        learning_rate=args.learning_rate,
        augment=not args.no_augment,
    )
    import_tensorflow(args)
    from training.export import export_version
    from training.model import train
    from training.report import evaluate_model, report_files

    n = min(len(data.train_images), hp.max_train_samples or len(data.train_images))
    extra = None
    plus = ""
    if feedback is not None:
        extra = (feedback.train_images, feedback.train_labels, args.feedback_weight)
        plus = f" + {len(feedback.train_labels)} feedback images (weight {args.feedback_weight:g})"
    print(
        f"Training on {n} images{plus}, {hp.epochs} epochs, batch {hp.batch_size}, seed {hp.seed}",
        file=sys.stderr,
    )
    # Progress goes to stderr (stdout carries only the result): a live bar on a TTY, else one line per epoch.
    verbose = 1 if sys.stderr.isatty() else 2
    # The test set gives the per-epoch curves only: no early stopping, no model selection on it.
    test = (data.test_images, data.test_labels)
    with contextlib.redirect_stdout(sys.stderr):
        model, result = train(
            hp, data.train_images, data.train_labels, validation=test, extra=extra, verbose=verbose
        )
    metrics = evaluate_model(model, data, hp, result)
    if feedback is not None:
        from training.feedback import feedback_metrics

        metrics["feedback"] = feedback_metrics(
            model,
            feedback,
            weight=args.feedback_weight,
            baseline=baseline,
            test_images=data.test_images,
            test_labels=data.test_labels,
        )
    version_dir = export_version(
        model,
        args.model_base_path,
        args.model_name,
        metrics=metrics,
        warmup_images=data.test_images[:32],
        extra_files=report_files(metrics),
    )
    print(f"test_accuracy {metrics['test_accuracy']:.4f}  train_seconds {metrics['train_seconds']:.0f}")
    if feedback is not None:
        fb, base = metrics["feedback"], metrics["feedback"]["baseline"]
        print(
            f"feedback {fb['snapshot_id']}: holdout_accuracy {_show(fb['holdout_accuracy'])} on "
            f"{fb['holdout_samples']} images; baseline version {base['version']}: holdout_accuracy "
            f"{_show(base['holdout_accuracy'])}, test_accuracy {_show(base['test_accuracy'])}"
        )
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


def _show(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def run_dataset(args: argparse.Namespace, env: settings_module.Settings) -> int:
    from training.feedback import snapshot_root
    from training.feedback_export import CassandraSettings, export_snapshot, parse_time

    root = snapshot_root(args.snapshot_dir, env.model_base_path)
    cassandra = CassandraSettings.from_env(os.environ)
    path, manifest = export_snapshot(
        cassandra,
        root,
        since=parse_time(args.since) if args.since else None,
        until=parse_time(args.until) if args.until else None,
        page_size=args.page_size,
        holdout_percent=args.holdout_percent,
        min_labels=args.min_labels,
        max_pages=args.max_pages,
        say=lambda line: print(line, file=sys.stderr),
    )
    if path is None:
        return 0
    rows = manifest["rows"]
    print(
        f"snapshot {manifest['id']}: {rows['train']} train + {rows['holdout']} holdout images "
        f"({rows['read']} rows read, {rows['duplicates']} duplicates, {rows['outside_window']} outside the "
        f"window, {rows['invalid']} invalid)"
    )
    for side in ("train", "holdout"):
        print(f"  {side:<8} per digit: " + " ".join(str(n) for n in manifest["per_digit"][side]))
    for warning in manifest["warnings"]:
        print(f"{PROG}: warning: snapshot {manifest['id']}: {warning}", file=sys.stderr)
    print(f"exported {path}")
    return 0


COMMANDS = {"train": run_train, "evaluate": run_evaluate, "inspect": run_inspect, "dataset": run_dataset}


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
        if command == "dataset":  # the export keeps its checkpoint (training/snapshot.py Spool)
            print(
                f"{PROG}: interrupted; run the same command again to continue from the last page",
                file=sys.stderr,
            )
        else:
            print(f"{PROG}: interrupted; no version was exported", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

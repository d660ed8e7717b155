"""`mnist-models`: list, status, promote, canary, rollback, retire, render-config, check.

Errors are one line on stderr with a distinct exit code (EXIT_CODES, docs/model-ops.md), never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from serving.ops import errors
from serving.ops.settings import Settings

PROG = "mnist-models"
Say = Callable[[str], None]
EXIT_CODES = {
    0: "success (also: nothing to do)",
    1: "unexpected error",
    2: "bad command line",
    errors.ConfigError.exit_code: "config file missing, unreadable or invalid; model directory missing",
    errors.ServerError.exit_code: "model server unreachable, too slow (deadline) or it rejected the request",
    errors.VersionNotFound.exit_code: "version not found on disk",
    errors.QualityGateFailed.exit_code: "quality gate: test accuracy below --min-accuracy, more than "
    "--max-accuracy-drop below stable, or not better than stable on its feedback holdout (use --force)",
    errors.LoadFailed.exit_code: "the server could not load the version in time (config restored)",
    errors.NothingToRollBack.exit_code: "no earlier stable version to roll back to",
}


def _positive_version(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"a version is a positive integer, got {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text!r}")
    return value


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    epilog = "exit codes:\n" + "\n".join(
        f"  {code}  {meaning}" for code, meaning in sorted(EXIT_CODES.items())
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Model version operations against TF Serving or mnist-serve: the config file is the "
        "source of truth; each change is written atomically, then applied with HandleReloadConfigRequest.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # The common options are accepted before or after the command; after it they default to "not given".
    common = argparse.ArgumentParser(add_help=False)
    for target, suppress in ((parser, False), (common, True)):

        def default(value: Any, *, _suppress: bool = suppress) -> Any:
            return argparse.SUPPRESS if _suppress else value

        target.add_argument(
            "--server",
            metavar="HOST:PORT",
            default=default(settings.server),
            help=f"model server gRPC address (env MODEL_SERVER_GRPC; default {settings.server})",
        )
        target.add_argument(
            "--config",
            metavar="FILE",
            default=default(settings.config),
            help=f"ModelServerConfig file (env MODEL_CONFIG_FILE; default {settings.config})",
        )
        target.add_argument(
            "--model-base-path",
            metavar="DIR",
            default=default(settings.model_base_path),
            help="directory holding <model name>/<version>/ (env MODEL_BASE_PATH; default: the "
            "parent of the config's base_path)",
        )
        target.add_argument(
            "--model-name",
            metavar="NAME",
            default=default(settings.model_name),
            help=f"model to operate on (env MODEL_NAME; default {settings.model_name})",
        )
        target.add_argument(
            "--timeout",
            metavar="S",
            type=_seconds,
            default=default(10.0),
            help="deadline of each gRPC call in seconds (default 10)",
        )
        target.add_argument(
            "--load-timeout",
            metavar="S",
            type=_seconds,
            default=default(300.0),
            help="how long to wait for a version to become AVAILABLE (default 300)",
        )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common], help=help_text, description=help_text)

    for name, what in (
        ("list", "versions on disk (test accuracy), in the config and on the server, with labels"),
        ("status", "the server's view: version states and where it resolves each label"),
    ):
        sub = command(name, what)
        sub.add_argument("--json", action="store_true", help="print JSON instead of a table")
    for name, label in (("promote", "stable"), ("canary", "canary")):
        sub = command(
            name, f"point the `{label}` label at VERSION (loading it first, waiting until AVAILABLE)"
        )
        sub.add_argument("version", type=_positive_version, metavar="VERSION")
        sub.add_argument(
            "--min-accuracy",
            type=_fraction,
            default=settings.min_accuracy,
            metavar="A",
            help=f"refuse a version whose metrics.json test_accuracy is below A "
            f"(env MODEL_MIN_ACCURACY; default {settings.min_accuracy})",
        )
        sub.add_argument(
            "--max-accuracy-drop",
            type=_fraction,
            default=settings.max_accuracy_drop,
            metavar="D",
            help=f"refuse a version whose test accuracy is more than D below the stable version's, or that "
            f"was trained with feedback and does not beat stable on its holdout "
            f"(env MODEL_MAX_ACCURACY_DROP; default {settings.max_accuracy_drop})",
        )
        sub.add_argument("--force", action="store_true", help="go ahead despite the quality gate")
    command("rollback", "point `stable` back at the version it pointed at before the last promote")
    command("retire", "unload versions no label points at (keeps the rollback target)")
    render = command(
        "render-config",
        "write a copy of the config with each model's base_path set to "
        "BASE_PATH/<model name> (for local runs)",
    )
    render.add_argument("--base-path", required=True, metavar="DIR", help="the local MODEL_BASE_PATH")
    render.add_argument("--out", required=True, metavar="FILE", help="where to write the copy")
    render.add_argument(
        "--if-missing",
        action="store_true",
        help="leave an existing FILE alone (it carries the local label history)",
    )
    command("check", "validate the config file (model present, specific versions, labels on listed versions)")
    return parser


class _LoadProgress:
    """A live status line on a terminal; otherwise one line per state change."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last = ""

    def __call__(self, version: int, state: Any, elapsed: float) -> None:
        name = state.state if state is not None else "not reported yet"
        if self.tty:
            self.stream.write(f"\r  version {version}: {name:<16} {elapsed:5.1f}s")
            if name == "AVAILABLE":
                self.stream.write("\n")
            self.stream.flush()
        elif name != self.last:
            print(f"  version {version}: {name} ({elapsed:.1f}s)", file=self.stream, flush=True)
        self.last = name


def _model_dir(args: argparse.Namespace, config: Any) -> Path:
    from serving.ops import model_config

    if args.model_base_path:
        return Path(args.model_base_path) / args.model_name
    return Path(model_config.find_model(config, args.model_name).base_path)


def _render_config(args: argparse.Namespace, say: Say) -> None:
    from serving.ops import model_config
    from serving.ops.config_file import ConfigFile

    target = Path(args.out)
    if args.if_missing and target.exists():
        say(f"{target} exists; left unchanged")
        return
    base = str(Path(args.base_path).resolve())
    rendered = model_config.with_base_path(ConfigFile(Path(args.config)).read(), base)
    for name in model_config.model_names(rendered):
        model_config.check(rendered, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    ConfigFile(target).write(rendered)
    say(f"wrote {target} (base path {base})")


def _check(args: argparse.Namespace, say: Say) -> None:
    from serving.ops import model_config
    from serving.ops.config_file import ConfigFile

    config = ConfigFile(Path(args.config)).read()
    model_config.check(config, args.model_name)
    listed = model_config.versions(config, args.model_name)
    labels = ", ".join(f"{k}={v}" for k, v in model_config.labels(config, args.model_name).items())
    say(f"{args.config}: OK (model {args.model_name}: versions {listed}; labels {labels or 'none'})")


def _list(args: argparse.Namespace, say: Say, client: Any) -> None:
    from serving.ops import inventory, model_config, report
    from serving.ops.config_file import ConfigFile

    config = ConfigFile(Path(args.config)).read()
    model_config.check(config, args.model_name)
    # Show whatever can be seen (file, disk, server), then fail on the first part that could not be.
    problem: errors.OpsError | None = None
    model_dir: Path | None = _model_dir(args, config)
    if not model_dir.is_dir():
        problem = errors.ConfigError(
            f"model directory {model_dir} not found: no versions on disk shown (set --model-base-path)"
        )
        model_dir = None
    try:
        states = client.version_states(args.model_name)
    except errors.ServerError as error:
        states, problem = None, problem or error
    rows = inventory.version_rows(config, args.model_name, model_dir=model_dir, states=states)
    if args.json:
        say(report.list_json(args.model_name, args.server, rows, server_reachable=states is not None))
    else:
        say(report.list_table(rows, server_reachable=states is not None))
    if problem is not None:
        raise problem


def _status(args: argparse.Namespace, say: Say, client: Any) -> None:
    from serving.ops import inventory, model_config, report
    from serving.ops.config_file import ConfigFile

    config = ConfigFile(Path(args.config)).read()
    model_config.check(config, args.model_name)
    states = client.version_states(args.model_name)
    views = inventory.label_views(config, args.model_name, client)
    render = report.status_json if args.json else report.status_table
    say(render(args.model_name, args.server, states, views))


def _change(args: argparse.Namespace, say: Say, client: Any, err: TextIO) -> None:
    from serving.ops.config_file import ConfigFile
    from serving.ops.operations import Operator

    config_file = ConfigFile(Path(args.config))
    operator = Operator(
        config_file=config_file,
        client=client,
        model_name=args.model_name,
        model_dir=_model_dir(args, config_file.read()),
        say=say,
        progress=_LoadProgress(err),
        load_timeout_s=args.load_timeout,
    )
    if args.command == "promote":
        operator.promote(
            args.version, min_accuracy=args.min_accuracy, max_drop=args.max_accuracy_drop, force=args.force
        )
    elif args.command == "canary":
        operator.canary(
            args.version, min_accuracy=args.min_accuracy, max_drop=args.max_accuracy_drop, force=args.force
        )
    elif args.command == "rollback":
        operator.rollback()
    elif args.command == "retire":
        operator.retire()


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
    from serving.ops.server import ModelServerClient

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    if args.command == "render-config":
        return _render_config(args, say)
    if args.command == "check":
        return _check(args, say)
    with ModelServerClient(args.server, timeout_s=args.timeout) as client:
        if args.command == "list":
            return _list(args, say, client)
        if args.command == "status":
            return _status(args, say, client)
        return _change(args, say, client, err)


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        settings = Settings.from_env()
    except ValueError as error:
        print(f"{PROG}: error: bad environment setting: {error}", file=err)
        return 2
    args = build_parser(settings).parse_args(argv)
    if argv is None:
        # Our own process: load the TF Serving protos without TensorFlow's 5-10 s start-up (see protos.py).
        from serving.ops.protos import skip_tensorflow_runtime

        skip_tensorflow_runtime()
    try:
        _run(args, out, err)
        return 0
    except errors.OpsError as error:
        print(f"{PROG}: error: {error.message}", file=err)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=err)
        return 130
    except Exception as error:  # a bug or an unforeseen environment problem: still one line, no traceback
        print(f"{PROG}: error: unexpected {type(error).__name__}: {error}", file=err)
        return 1


if __name__ == "__main__":
    sys.exit(main())

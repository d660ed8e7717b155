"""`mnist-models`: list, status, promote, canary, rollback, retire, rollout, scorecard, render-config, check.

Errors are one line on stderr with a distinct exit code (EXIT_CODES, docs/model-ops.md), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from serving.ops import errors
from serving.ops.settings import Settings
from serving.ops.steps import check_steps

PROG = "mnist-models"
Say = Callable[[str], None]
EXIT_CODES = {
    0: "success (also: nothing to do)",
    1: "unexpected error",
    2: "bad command line",
    errors.ConfigError.exit_code: "config file or its history missing, unreadable or invalid; model "
    "directory missing; or the change was made but its history not written (the message says so)",
    errors.ServerError.exit_code: "model server unreachable, too slow (deadline) or it rejected the request",
    errors.VersionNotFound.exit_code: "version not found on disk",
    errors.QualityGateFailed.exit_code: "quality gate: test accuracy below --min-accuracy, more than "
    "--max-accuracy-drop below stable, or not better than stable on its feedback holdout (use --force)",
    errors.LoadFailed.exit_code: "the server could not load the version in time (config restored)",
    errors.NothingToRollBack.exit_code: "no earlier stable version to roll back to",
    errors.GatewayError.exit_code: "gateway unreachable, too slow, refused the token or answered an error",
    errors.RolloutConflict.exit_code: "another rollout is running, or this one changed elsewhere (--abort)",
    errors.GuardFailed.exit_code: "rollout rolled back: a guard failed (the message names it, with numbers)",
    errors.RolloutInterrupted.exit_code: "rollout rolled back: interrupted by SIGINT or SIGTERM",
    errors.NoRollout.exit_code: "rollout --resume: no interrupted rollout to resume, or not a resumable one",
}


def _gateway_url(text: str) -> str:
    from serving.ops.settings import check_gateway_url

    try:
        return check_gateway_url(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).replace("GATEWAY_URL", "--gateway")) from None


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


def _steps(text: str) -> tuple[int, ...]:
    try:
        return check_steps([int(part) for part in text.split(",")])
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{error} (e.g. 5,25,50,100), got {text!r}") from None


# The driver's lease is 3 polls (docs/model-ops.md): 30 minutes at most, within the hour the gateway allows
# a lease to run ahead of its clock (gateway/rollout.py MAX_LEASE_S), with room for the clocks to differ.
MAX_POLL_S = 600.0


def _poll_seconds(text: str) -> float:
    value = _seconds(text)
    if value > MAX_POLL_S:
        raise argparse.ArgumentTypeError(f"at most {MAX_POLL_S:g} s between polls, got {text!r}")
    return value


def _whole_seconds(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 86_400:
        raise argparse.ArgumentTypeError(f"whole seconds from 1 to 86400, got {text!r}")
    return int(text)


def _window(text: str) -> int:
    if not text.isdigit() or not 60 <= int(text) <= 604_800:
        raise argparse.ArgumentTypeError(f"a window is 60 to 604800 seconds, got {text!r}")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"a count is a whole number >= 0, got {text!r}")
    return int(text)


def _ratio(text: str) -> float:
    value = _seconds(text)
    if value < 1.0:
        raise argparse.ArgumentTypeError(f"a ratio to stable is >= 1, got {text!r}")
    return value


def _milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of milliseconds: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _add_rollout(command: Callable[[str, str], argparse.ArgumentParser], settings: Settings) -> None:
    from serving.ops.guards import Limits

    limits = Limits()
    sub = command(
        "rollout",
        "send a growing share of traffic to VERSION through the gateway while its guards pass, then promote "
        "it; a failed guard or Ctrl-C sends everything back to stable at once",
    )
    sub.add_argument("version", type=_positive_version, metavar="VERSION", nargs="?")
    action = sub.add_mutually_exclusive_group()
    action.add_argument("--status", action="store_true", help="the stored rollout, the split now, events")
    action.add_argument("--abort", action="store_true", help="end the running rollout: all traffic to stable")
    action.add_argument("--resume", action="store_true", help="continue an interrupted rollout at its step")
    sub.add_argument("--json", action="store_true", help="with --status: the gateway's JSON")
    sub.add_argument(
        "--steps",
        type=_steps,
        default=(5, 25, 50, 100),
        metavar="P,P,..",
        help="percentages of traffic to VERSION, increasing, ending at 100 (default 5,25,50,100)",
    )
    sub.add_argument(
        "--step-seconds",
        type=_whole_seconds,
        default=300,
        metavar="S",
        help="how long each step is held while the guards pass (default 300)",
    )
    sub.add_argument(
        "--shadow",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the other version also answers a copy of each request, for the agreement guard (default on)",
    )
    sub.add_argument(
        "--poll-seconds",
        type=_poll_seconds,
        default=5.0,
        metavar="S",
        help="how often the guards are checked and the lease renewed (default 5, at most 600; the lease is "
        "3 polls, at least 10 s)",
    )
    sub.add_argument(
        "--window",
        type=_window,
        default=600,
        metavar="S",
        help="the scorecard window the guards read (default 600, 60..604800)",
    )
    guard = sub.add_argument_group("guards (docs/model-ops.md: why these defaults)")
    guard.add_argument(
        "--max-error-rate",
        type=_fraction,
        default=limits.max_error_rate,
        metavar="R",
        help=f"most errors per request above stable's (default {limits.max_error_rate})",
    )
    guard.add_argument(
        "--max-p99-ratio",
        type=_ratio,
        default=limits.max_p99_ratio,
        metavar="X",
        help=f"p99 latency at most X times stable's ... (default {limits.max_p99_ratio})",
    )
    guard.add_argument(
        "--p99-slack-ms",
        type=_milliseconds,
        default=limits.p99_slack_ms,
        metavar="MS",
        help=f"... plus MS (default {limits.p99_slack_ms:g})",
    )
    guard.add_argument(
        "--min-agreement",
        type=_fraction,
        default=limits.min_agreement,
        metavar="R",
        help=f"least share of shadow pairs agreeing with stable (default {limits.min_agreement})",
    )
    guard.add_argument(
        "--min-requests",
        type=_count,
        default=limits.min_requests,
        metavar="N",
        help=f"requests before error rate and latency are judged (default {limits.min_requests})",
    )
    guard.add_argument(
        "--min-compared",
        type=_count,
        default=limits.min_compared,
        metavar="N",
        help=f"shadow pairs before agreement is judged (default {limits.min_compared})",
    )
    guard.add_argument(
        "--min-labels",
        type=_count,
        default=limits.min_labels,
        metavar="N",
        help=f"feedback labels on each version before accuracy is judged (default {limits.min_labels})",
    )
    guard.add_argument(
        "--min-accuracy",
        type=_fraction,
        default=settings.min_accuracy,
        metavar="A",
        help=f"the metrics.json gate, at the start and at the promotion (default {settings.min_accuracy})",
    )
    guard.add_argument(
        "--max-accuracy-drop",
        type=_fraction,
        default=settings.max_accuracy_drop,
        metavar="D",
        help="the quality gate against stable, as for promote (env MODEL_MAX_ACCURACY_DROP; "
        f"default {settings.max_accuracy_drop})",
    )
    guard.add_argument("--force", action="store_true", help="go ahead despite the quality gate")


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
            help="model server gRPC address; several replicas as a comma-separated list, or dns:///NAME:PORT "
            "for every address NAME resolves to: each gets every change "
            f"(env MODEL_SERVER_GRPC; default {settings.server})",
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
        target.add_argument(
            "--gateway",
            metavar="URL",
            type=_gateway_url,
            default=default(settings.gateway_url),
            help=f"the gateway, for rollout and scorecard (env GATEWAY_URL; default {settings.gateway_url}); "
            "changes send env OPS_TOKEN",
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
    _add_rollout(command, settings)
    card = command("scorecard", "the versions side by side, from the gateway's live counters")
    card.add_argument("--window", type=_window, default=600, metavar="S", help="seconds back (default 600)")
    card.add_argument("--json", action="store_true", help="the gateway's JSON")
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
    command(
        "check",
        "validate the config file (no model listed twice, model present, specific versions, labels on listed "
        "versions)",
    )
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


class _RolloutProgress:
    """One live line on a terminal (step, time left, guard numbers); nothing otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()

    def __call__(self, state: dict[str, Any], decision: Any, left_s: float) -> None:
        if self.tty:
            from serving.ops.rollout_report import progress_line

            self.stream.write("\r\033[K" + progress_line(state, decision, left_s))
            self.stream.flush()

    def end_line(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _gateway(args: argparse.Namespace, settings: Settings) -> Any:
    from serving.ops.gateway_client import GatewayClient

    return GatewayClient(args.gateway, token=settings.ops_token, timeout_s=args.timeout)


def _scorecard(args: argparse.Namespace, settings: Settings, say: Say) -> None:
    from serving.ops.rollout_report import scorecard_table

    card = _gateway(args, settings).scorecard(args.model_name, window_s=args.window)
    say(json.dumps(card) if args.json else scorecard_table(card))


def _rollout(args: argparse.Namespace, settings: Settings, say: Say, client: Any, err: TextIO) -> None:
    from serving.ops.config_file import ConfigFile
    from serving.ops.guards import Limits
    from serving.ops.operations import Operator
    from serving.ops.rollout import Driver, Plan, StopFlag

    config_file = ConfigFile(Path(args.config))
    model_dir = _model_dir(args, config_file.read())
    progress = _RolloutProgress(err)

    def say_line(line: str) -> None:
        progress.end_line()
        say(line)

    operator = Operator(
        config_file=config_file,
        client=client,
        model_name=args.model_name,
        model_dir=model_dir,
        say=say_line,
        progress=_LoadProgress(err),
        load_timeout_s=args.load_timeout,
    )
    limits = Limits(
        max_error_rate=args.max_error_rate,
        max_p99_ratio=args.max_p99_ratio,
        p99_slack_ms=args.p99_slack_ms,
        min_agreement=args.min_agreement,
        min_requests=args.min_requests,
        min_compared=args.min_compared,
        min_labels=args.min_labels,
    )
    stop = StopFlag()
    driver = Driver(
        gateway=_gateway(args, settings),
        operator=operator,
        model_name=args.model_name,
        model_dir=model_dir,
        limits=limits,
        min_accuracy=args.min_accuracy,
        max_drop=args.max_accuracy_drop,
        force=args.force,
        poll_s=args.poll_seconds,
        window_s=args.window,
        say=say_line,
        progress=progress,
        stop=stop,
    )
    with stop.installed():
        try:
            if args.resume:
                driver.resume()
            else:
                driver.start(Plan(args.version, args.steps, args.step_seconds, args.shadow))
        finally:
            progress.end_line()


def _rollout_without_server(args: argparse.Namespace, settings: Settings, say: Say) -> None:
    from serving.ops.rollout import abort
    from serving.ops.rollout_report import rollout_status

    gateway = _gateway(args, settings)
    if args.status:
        answer = gateway.rollout(args.model_name)
        say(json.dumps(answer) if args.json else rollout_status(answer))
        return
    # --abort needs neither the model server nor the config: only the gateway's state changes.
    abort(gateway, args.model_name, say=say)


def _run(args: argparse.Namespace, settings: Settings, out: TextIO, err: TextIO) -> None:
    from serving.ops.server import ModelServers

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    if args.command == "render-config":
        return _render_config(args, say)
    if args.command == "check":
        return _check(args, say)
    if args.command == "scorecard":
        return _scorecard(args, settings, say)
    if args.command == "rollout" and (args.status or args.abort):
        return _rollout_without_server(args, settings, say)
    with ModelServers(args.server, timeout_s=args.timeout) as client:
        if args.command == "list":
            return _list(args, say, client)
        if args.command == "status":
            return _status(args, say, client)
        if args.command == "rollout":
            return _rollout(args, settings, say, client, err)
        return _change(args, say, client, err)


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        settings = Settings.from_env()
    except ValueError as error:
        print(f"{PROG}: error: bad environment setting: {error}", file=err)
        return 2
    parser = build_parser(settings)
    args = parser.parse_args(argv)
    if args.command == "rollout":
        given = args.status or args.abort or args.resume
        if (args.version is None) == (not given):
            parser.error("rollout takes VERSION, or one of --status, --abort, --resume")
        if args.json and not args.status:
            parser.error("rollout --json goes with --status")
    if argv is None:
        # Our own process: load the TF Serving protos without TensorFlow's 5-10 s start-up (see protos.py).
        from serving.ops.protos import skip_tensorflow_runtime

        skip_tensorflow_runtime()
    try:
        _run(args, settings, out, err)
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

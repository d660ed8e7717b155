"""`make up`: the whole stack on one machine without Docker.

    python -m deploy.local.stack [--gateway-port 8080] [--grpc-port 8500] [--rest-port 8501]
                                 [--cassandra-port 9042] [--state-dir .state] ...

Order: check the ports, train a model when the model base path has none, start a local Cassandra node and
apply the migrations, start `mnist-serve` on a local copy of serving/models.config, start the gateway, wait
for each to be ready, print the URL, then watch. Ctrl-C (or SIGTERM) stops every part; a part that dies stops
the stack with its last log lines. State lives under one directory (default `.state/`; `make clean`
removes it).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from deploy.local.cassandra_node import CassandraNode
from deploy.local.readiness import (
    NotReady,
    PortBusy,
    PortClaim,
    WaitTimeout,
    ensure_ports_free,
    http_ok,
    model_available,
    tcp_open,
    wait_for,
)
from deploy.local.supervisor import PartDied, Supervisor, take_ctrl_c
from training.contract import is_complete, version_dirs

REPO_ROOT = Path(__file__).resolve().parents[2]
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
TRAIN_ESTIMATE = "about 8-13 minutes on 2 CPU cores (8 epochs; --epochs N trades accuracy for time)"
# TF Serving's flag, as in serving/README.md: the server accepts the gateway's keepalive pings (every 60 s
# while its health watch is open); gRPC's default takes pings more often than every 5 min as abuse (GOAWAY).
MODEL_SERVER_PING_POLICY = "--grpc_channel_arguments=grpc.http2.min_ping_interval_without_data_ms=30000"


class StackError(Exception):
    """A problem the user can fix; printed as one line, exit code 1."""


@dataclass
class StackConfig:
    state_dir: Path
    model_base_path: Path
    model_name: str = "mnist"
    host: str = "127.0.0.1"
    gateway_port: int = 8080
    grpc_port: int = 8500
    rest_port: int = 8501
    cassandra_port: int = 9042
    keyspace: str = "mnist"
    data_dir: Path | None = None
    download: bool = True
    epochs: int | None = None
    max_train_samples: int | None = None
    ops_token: str | None = None
    serving_dir: Path = REPO_ROOT / "serving"
    bin_dir: Path = field(default_factory=lambda: Path(sys.executable).parent)
    cassandra_timeout_s: float = 600.0  # the first start fetches Cassandra from Maven Central
    serve_timeout_s: float = 180.0
    gateway_timeout_s: float = 60.0
    stop_grace_s: float = 20.0

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.rest_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.host}:{self.gateway_port}"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def models_config(self) -> Path:
        return self.state_dir / "serving" / "models.config"

    def tool(self, name: str) -> Path:
        path = self.bin_dir / name
        if not path.exists():
            raise StackError(f"{name} is not installed in {self.bin_dir}: run `make venv` first")
        return path


# -- configuration --------------------------------------------------------------------------------
def _port_of(address: str | None) -> int | None:
    """The port of 'host:port' or 'http://host:port' (MODEL_SERVER_GRPC / _REST, docs/contracts.md)."""
    if not address:
        return None
    parsed = urlsplit(address if "//" in address else f"//{address}")
    return parsed.port


def _int_env(env: dict[str, str], name: str) -> int | None:
    value = env.get(name)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise StackError(f"{name}={value!r} is not a port number") from None


def default_data_dir(env: dict[str, str]) -> Path | None:
    """MNIST_DATA_DIR when set (it must hold the files), else None: the trainer downloads them."""
    if not env.get("MNIST_DATA_DIR"):
        return None
    path = Path(env["MNIST_DATA_DIR"])
    if not _has_mnist(path):
        raise StackError(f"MNIST_DATA_DIR {path} does not hold the four MNIST IDX files")
    return path


def _has_mnist(path: Path) -> bool:
    return all((path / f"{n}.gz").exists() or (path / n).exists() for n in MNIST_FILES)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="make up",
        description="Run the whole stack locally (no Docker): Cassandra, mnist-serve, the gateway. "
        "Trains a model first when the model base path has none. Ctrl-C stops everything.",
        epilog="Ports and paths also come from the environment: GATEWAY_PORT, MODEL_SERVER_GRPC, "
        "MODEL_SERVER_REST, CASSANDRA_PORT, MODEL_BASE_PATH, MNIST_DATA_DIR, STACK_STATE_DIR, OPS_TOKEN.",
    )
    parser.add_argument("--gateway-port", type=int, help="HTTP port of the gateway (default 8080)")
    parser.add_argument("--grpc-port", type=int, help="gRPC port of the model server (default 8500)")
    parser.add_argument("--rest-port", type=int, help="REST port of the model server (default 8501)")
    parser.add_argument("--cassandra-port", type=int, help="CQL port of the local Cassandra (default 9042)")
    parser.add_argument("--state-dir", type=Path, help="models, Cassandra data, spool, logs (default .state)")
    parser.add_argument("--model-base-path", type=Path, help="model versions (default STATE_DIR/models)")
    parser.add_argument("--data-dir", type=Path, help="MNIST IDX files for training (default MNIST_DATA_DIR)")
    parser.add_argument(
        "--no-download", action="store_true", help="never download MNIST; fail when no local copy is found"
    )
    parser.add_argument("--epochs", type=int, help="training epochs when a model must be trained")
    parser.add_argument(
        "--max-train-samples", type=int, help="train on the first N images only (quick, less accurate)"
    )
    return parser


def config_from(args: argparse.Namespace, env: dict[str, str]) -> StackConfig:
    state_dir = (args.state_dir or Path(env.get("STACK_STATE_DIR") or REPO_ROOT / ".state")).resolve()
    env_base = env.get("MODEL_BASE_PATH")
    model_base = args.model_base_path or (Path(env_base) if env_base else None)
    data_dir = args.data_dir or default_data_dir(env)
    if args.data_dir is not None and not _has_mnist(args.data_dir):
        raise StackError(f"--data-dir {args.data_dir} does not hold the four MNIST IDX files")
    config = StackConfig(
        state_dir=state_dir,
        model_base_path=(model_base or state_dir / "models").resolve(),
        model_name=env.get("MODEL_NAME") or "mnist",
        gateway_port=args.gateway_port or _int_env(env, "GATEWAY_PORT") or 8080,
        grpc_port=args.grpc_port or _port_of(env.get("MODEL_SERVER_GRPC")) or 8500,
        rest_port=args.rest_port or _port_of(env.get("MODEL_SERVER_REST")) or 8501,
        cassandra_port=args.cassandra_port or _int_env(env, "CASSANDRA_PORT") or 9042,
        keyspace=env.get("CASSANDRA_KEYSPACE") or "mnist",
        data_dir=data_dir.resolve() if data_dir else None,
        download=not args.no_download,
        epochs=args.epochs,
        max_train_samples=args.max_train_samples,
        ops_token=env.get("OPS_TOKEN") or None,
    )
    for name in ("gateway_port", "grpc_port", "rest_port", "cassandra_port"):
        port = getattr(config, name)
        if not 0 < port < 65536:
            raise StackError(f"{name.replace('_', ' ')} {port} is not a valid port")
    return config


# -- the steps ------------------------------------------------------------------------------------
def model_versions(base_path: Path, model_name: str) -> list[int]:
    """Published versions: version directories (`training.contract.version_of`) holding a SavedModel."""
    model_dir = base_path / model_name
    if not model_dir.is_dir():
        return []
    return [version for version, path in version_dirs(model_dir).items() if is_complete(path)]


def train_command(config: StackConfig) -> list[str]:
    argv = [
        str(config.tool("mnist-train")),
        "--model-base-path",
        str(config.model_base_path),
        "--model-name",
        config.model_name,
    ]
    if config.data_dir is not None:
        argv += ["--data-dir", str(config.data_dir)]
    elif config.download:
        argv += ["--download"]
    else:
        raise StackError(
            "no model to serve and no MNIST files to train one: set MNIST_DATA_DIR (or --data-dir), "
            "allow the download, or point MODEL_BASE_PATH at exported versions"
        )
    if config.epochs is not None:
        argv += ["--epochs", str(config.epochs)]
    if config.max_train_samples is not None:
        argv += ["--max-train-samples", str(config.max_train_samples)]
    return argv


def ensure_model(config: StackConfig, say) -> None:
    versions = model_versions(config.model_base_path, config.model_name)
    if versions:
        say(f"model {config.model_name}: versions {versions} in {config.model_base_path}")
        return
    argv = train_command(config)
    source = f"MNIST from {config.data_dir}" if config.data_dir else "MNIST downloaded with checksum checks"
    quick = config.epochs is not None or config.max_train_samples is not None
    estimate = "less than the defaults' 8-13 minutes (quick settings)" if quick else TRAIN_ESTIMATE
    say(f"no model in {config.model_base_path}: training one ({source}); this takes {estimate}")
    say("$ " + shlex.join(argv))
    started = time.monotonic()
    # In the foreground with the terminal: the trainer's progress bar stays a progress bar.
    result = subprocess.run(argv, check=False)
    if result.returncode != 0:
        raise StackError(f"training failed (exit code {result.returncode}); nothing was started")
    say(f"trained in {time.monotonic() - started:.0f} s")


def ensure_models_config(config: StackConfig, say) -> Path:
    """A local copy of serving/models.config whose base_path is the local models directory, made once by
    `mnist-models render-config`: `mnist-models promote|canary|rollback` rewrite it later, and that lasts."""
    target = config.models_config
    if target.exists():
        return target
    template = config.serving_dir / "models.config"
    if not template.exists():
        raise StackError(f"{template} is missing")
    target.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        str(config.tool("mnist-models")),
        "--config",
        str(template),
        "--model-name",
        config.model_name,
        "render-config",
        "--base-path",
        str(config.model_base_path),
        "--out",
        str(target),
        "--if-missing",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not target.exists():
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise StackError(f"could not write {target}: {detail[-1] if detail else result.returncode}")
    say(f"wrote {target} (base path {config.model_base_path / config.model_name})")
    return target


def check_served_versions(config: StackConfig) -> None:
    """Fail fast when the config serves only versions that are not on disk (the model would never load)."""
    listed = [int(v) for v in re.findall(r"\bversions:\s*(\d+)", config.models_config.read_text())]
    on_disk = model_versions(config.model_base_path, config.model_name)
    if listed and not set(listed) & set(on_disk):
        model_dir = config.model_base_path / config.model_name
        raise StackError(
            f"{config.models_config} serves version(s) {listed} but {model_dir} holds {on_disk}: "
            "edit the `versions:` and labels there (or delete it to start from serving/models.config)"
        )


def ops_token(config: StackConfig) -> str:
    """OPS_TOKEN from the environment, else one generated once and kept in STATE_DIR/ops-token (mode 600)."""
    if config.ops_token:
        return config.ops_token
    path = config.state_dir / "ops-token"
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def cassandra_command(config: StackConfig) -> list[str]:
    return [
        str(config.tool("mnist-cassandra")),
        "--port",
        str(config.cassandra_port),
        "--data-dir",
        str(config.state_dir / "cassandra"),
    ]


def serve_command(config: StackConfig) -> list[str]:
    batching = config.serving_dir / "batching_parameters.txt"
    argv = [
        str(config.tool("mnist-serve")),
        f"--port={config.grpc_port}",
        f"--rest_api_port={config.rest_port}",
        f"--bind_address={config.host}",
        f"--model_config_file={config.models_config}",
        "--model_config_file_poll_wait_seconds=5",
        "--file_system_poll_wait_seconds=5",
        "--allow_version_labels_for_unavailable_models",
        MODEL_SERVER_PING_POLICY,
    ]
    if batching.exists():
        argv += ["--enable_batching", f"--batching_parameters_file={batching}"]
    monitoring = config.serving_dir / "monitoring.config"
    if monitoring.exists():
        argv += [f"--monitoring_config_file={monitoring}"]
    return argv


def service_env(config: StackConfig, token: str) -> dict[str, str]:
    """The shared settings every part reads (docs/contracts.md), pointing at the local parts."""
    env = dict(os.environ)
    env.update(
        MODEL_BASE_PATH=str(config.model_base_path),
        MODEL_NAME=config.model_name,
        MODEL_SERVER_GRPC=config.grpc_target,
        MODEL_SERVER_REST=config.rest_url,
        CASSANDRA_HOSTS=config.host,
        CASSANDRA_PORT=str(config.cassandra_port),
        # the local node's login (it listens on 127.0.0.1 only): deploy/local/cassandra_node.py
        CASSANDRA_USERNAME=CassandraNode.credentials.username,
        CASSANDRA_PASSWORD=CassandraNode.credentials.password,
        CASSANDRA_KEYSPACE=config.keyspace,
        GATEWAY_HOST=config.host,
        GATEWAY_PORT=str(config.gateway_port),
        GATEWAY_SPOOL_DIR=str(config.state_dir / "spool"),
        OPS_TOKEN=token,
    )
    return env


def migrate(config: StackConfig, env: dict[str, str], say) -> None:
    """mnist-migrate: idempotent (a warm start finds nothing to apply); waits for the node to take queries."""
    argv = [str(config.tool("mnist-migrate")), "--wait", "60"]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    for line in (result.stdout + result.stderr).splitlines():
        say(f"migrate: {line}")
    if result.returncode != 0:
        raise StackError(f"mnist-migrate failed (exit code {result.returncode}); see the lines above")


def start_stack(config: StackConfig, sup: Supervisor) -> float:
    """Start every part and wait until each is ready; returns the seconds it took."""
    started = time.monotonic()
    token = ops_token(config)
    env = service_env(config, token)
    (config.state_dir / "spool").mkdir(parents=True, exist_ok=True)

    sup.say(f"starting Cassandra on {config.host}:{config.cassandra_port} ({config.state_dir / 'cassandra'})")
    cassandra = sup.start("cassandra", cassandra_command(config), env=env, cwd=REPO_ROOT)
    waited = wait_for(
        lambda: tcp_open(config.host, config.cassandra_port) or _not_ready("CQL port closed"),
        what="Cassandra",
        timeout_s=config.cassandra_timeout_s,
        interval_s=0.5,
        alive=cassandra.ensure_alive,
    )
    sup.say(f"Cassandra answers after {waited:.1f} s; applying migrations")
    migrate(config, env, sup.say)

    models_config = ensure_models_config(config, sup.say)
    check_served_versions(config)
    sup.say(f"starting mnist-serve: gRPC {config.grpc_target}, REST {config.rest_url} ({models_config})")
    serve = sup.start("serve", serve_command(config), env=env, cwd=REPO_ROOT)
    waited = wait_for(
        model_available(config.rest_url, config.model_name),
        what="the model server",
        timeout_s=config.serve_timeout_s,
        interval_s=0.5,
        alive=serve.ensure_alive,
    )
    sup.say(f"model {config.model_name} AVAILABLE after {waited:.1f} s")

    gateway = sup.start("gateway", [str(config.tool("mnist-gateway"))], env=env, cwd=REPO_ROOT)
    waited = wait_for(
        http_ok(f"{config.gateway_url}/readyz"),
        what="the gateway",
        timeout_s=config.gateway_timeout_s,
        interval_s=0.25,
        alive=gateway.ensure_alive,
    )
    sup.say(f"gateway ready after {waited:.1f} s")
    return time.monotonic() - started


def _not_ready(reason: str) -> bool:
    raise NotReady(reason)


def print_summary(config: StackConfig, sup: Supervisor, seconds: float) -> None:
    models = f"{config.tool('mnist-models')} --server {config.grpc_target} --config {config.models_config}"
    for line in (
        f"ready in {seconds:.1f} s: {config.gateway_url}",
        f"  web page and API   {config.gateway_url}/  (POST {config.gateway_url}/v1/predict)",
        f"  model server       gRPC {config.grpc_target}, REST {config.rest_url}",
        f"  Cassandra          {config.host}:{config.cassandra_port}, keyspace {config.keyspace}",
        f"  model versions     {models} list",
        f"  ops token          {'$OPS_TOKEN' if config.ops_token else config.state_dir / 'ops-token'}",
        f"  state and logs     {config.state_dir} (make clean removes it)",
        "Ctrl-C stops everything.",
    ):
        sup.say(line)


def run(config: StackConfig, out=None) -> int:
    """The whole lifecycle; returns the exit code."""
    config.state_dir.mkdir(parents=True, exist_ok=True)
    sup = Supervisor(out, log_dir=config.log_dir)
    ensure_ports_free(
        [
            PortClaim("gateway", config.host, config.gateway_port),
            PortClaim("model server gRPC", config.host, config.grpc_port),
            PortClaim("model server REST", config.host, config.rest_port),
            PortClaim("Cassandra", config.host, config.cassandra_port),
        ]
    )
    ensure_model(config, sup.say)
    code = 0
    try:
        seconds = start_stack(config, sup)
        print_summary(config, sup, seconds)
        sup.watch()
    except KeyboardInterrupt:
        sup.say("stopping (Ctrl-C again to kill at once)")
    except (PartDied, WaitTimeout, StackError) as exc:
        sup.say(f"error: {exc}")
        sup.say("stopping the rest of the stack")
        code = 1
    finally:
        sup.stop_all(config.stop_grace_s)
    sup.say("stopped; nothing left running")
    return code


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    take_ctrl_c()
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        config = config_from(args, dict(os.environ))
        return run(config)
    except (StackError, PortBusy, WaitTimeout) as exc:
        print(f"make up: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("make up: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`mnist-gateway`: the gateway under gunicorn (threaded workers), on GATEWAY_HOST:GATEWAY_PORT.

Each worker builds its own app after the fork, so its gRPC channel and Cassandra session are its own; a
background warm-up opens both before the first request needs them. On SIGTERM/SIGINT gunicorn stops
accepting, lets requests in flight finish (GATEWAY_GRACEFUL_TIMEOUT_S) and each worker closes its store, which
flushes the writes still in flight (anything Cassandra cannot take stays in the durable spool).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading

from gunicorn.app.base import BaseApplication

from gateway.settings import Settings, SettingsError


def logging_config(level: str) -> dict:
    """gunicorn's logs and the app's as JSON lines on stderr (gunicorn's access log is off: the app logs)."""
    handler = {"()": "gateway.logs.BackgroundStreamHandler", "formatter": "json"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "gateway.logs.JsonFormatter"}},
        "handlers": {"json": handler},
        "root": {"level": level, "handlers": ["json"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["json"], "propagate": False},
            "gunicorn.access": {"level": "WARNING", "handlers": ["json"], "propagate": False},
            # The driver logs every failed reconnection with a traceback; the store says it once, plainly.
            "cassandra": {"level": "ERROR"},
        },
    }


def _warm_up(worker) -> None:
    """Connect to the model server and Cassandra now rather than on the first request.

    Starting the store also starts its replay of spool files left by a previous process, so predictions
    spooled before a restart reach Cassandra even if no request comes.
    """
    from gateway import services
    from gateway.services import EXTENSION

    svc: services.Services = worker.wsgi.extensions[EXTENSION]
    settings = svc.settings

    def run() -> None:
        steps = {
            "model server": lambda: svc.model_client.model_status(label=settings.model_label),
            "Cassandra": lambda: svc.store.ping(),
        }
        for name, step in steps.items():
            try:
                step()
            except Exception as exc:  # /readyz reports it; requests answer clear errors meanwhile
                worker.log.warning("warm-up: %s not reachable yet: %s", name, exc)

    threading.Thread(target=run, name="warm-up", daemon=True).start()


def _close(server, worker) -> None:
    from gateway.services import EXTENSION

    app = getattr(worker, "wsgi", None)
    if app is not None and EXTENSION in getattr(app, "extensions", {}):
        app.extensions[EXTENSION].close()


def _child_exit(server, worker) -> None:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, directory)


class GatewayServer(BaseApplication):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        options = {
            "bind": [f"{s.host}:{s.port}"],
            "workers": s.workers,
            "threads": s.threads,
            "worker_class": "gthread",
            "graceful_timeout": s.graceful_timeout_s,
            "timeout": max(30, int(s.model_timeout_s * (s.model_retries + 1)) + 10),
            "keepalive": 5,
            "preload_app": False,
            "proc_name": "mnist-gateway",
            "accesslog": None,
            "logconfig_dict": logging_config(s.log_level),
            "post_worker_init": _warm_up,
            "worker_exit": _close,
            "child_exit": _child_exit,
            # gunicorn's own header limits; the body limit is the app's (MAX_CONTENT_LENGTH -> 413 JSON).
            "limit_request_line": 8190,
            "limit_request_fields": 100,
        }
        # gunicorn >= 25.1 opens a control socket at one fixed path per user: several gateways on one host
        # (tests, replicas) would fight over it, and nothing here uses gunicornc.
        if "control_socket_disable" in self.cfg.settings:
            options["control_socket_disable"] = True
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self):
        from gateway.app import create_app

        return create_app(self.settings)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mnist-gateway",
        description="Run the MNIST gateway (Flask under gunicorn). Settings come from the environment "
        "(see docs/gateway.md); the options below override them.",
    )
    parser.add_argument("--host", help="address to bind (GATEWAY_HOST, default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port to bind (GATEWAY_PORT, default 8080)")
    parser.add_argument("--workers", type=int, help="worker processes (GATEWAY_WORKERS, default 1)")
    parser.add_argument("--threads", type=int, help="threads per worker (GATEWAY_THREADS, default 16)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = dict(os.environ)
    for flag, name in (
        ("host", "GATEWAY_HOST"),
        ("port", "GATEWAY_PORT"),
        ("workers", "GATEWAY_WORKERS"),
        ("threads", "GATEWAY_THREADS"),
    ):
        if getattr(args, flag) is not None:
            env[name] = str(getattr(args, flag))
    try:
        settings = Settings.from_env(env)
    except SettingsError as exc:
        print(f"mnist-gateway: error: {exc}", file=sys.stderr)
        return 2
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Before anything imports prometheus_client: workers then share their samples through files here.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mnist-gateway-metrics-")
    GatewayServer(settings).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

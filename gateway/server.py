"""`mnist-gateway`: the gateway under Granian's WSGI server, on GATEWAY_HOST:GATEWAY_PORT.

Granian parses HTTP in Rust and hands each request to one of GATEWAY_THREADS Python threads per worker
process (GATEWAY_WORKERS); docs/gateway.md gives its CPU per request.

Each worker builds its own app after the fork (`worker_app`), so its gRPC channel and Cassandra session are
its own; a background warm-up opens both before the first request needs them. On SIGTERM/SIGINT Granian
stops accepting, lets requests in flight finish (up to GATEWAY_GRACEFUL_TIMEOUT_S, then the worker is killed)
and each worker closes its store, which ships what its write-ahead log holds while Cassandra takes it (the
rest stays on disk for the next start). SIGHUP replaces the workers one by one, gracefully;
GATEWAY_WORKER_LIFETIME_S recycles them on a schedule, and a worker that dies is replaced.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing.util
import os
import re
import sys
import tempfile
import threading
from pathlib import Path

from gateway.settings import Settings, SettingsError
from gateway.store.wal import process_alive

log = logging.getLogger("gateway.server")

# Granian's HTTP/1 read buffer: the request line and headers must fit (larger: 431/400 from Granian);
# the body is the app's (MAX_CONTENT_LENGTH -> 413 JSON).
HEADER_BUFFER_BYTES = 64 * 1024


class ThreadAdviceFilter(logging.Filter):
    """Drops Granian's start-up advice against more threads than cores: these threads wait on gRPC."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Python threads, which seems quite high" not in record.getMessage()


def logging_config(level: str) -> dict:
    """Granian's logs and the app's as JSON lines on stderr (Granian's access log is off: the app logs)."""
    handler = {"()": "gateway.logs.BackgroundStreamHandler", "formatter": "json"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "gateway.logs.JsonFormatter"}},
        "filters": {"thread_advice": {"()": "gateway.server.ThreadAdviceFilter"}},
        "handlers": {"json": handler},
        "root": {"level": level, "handlers": ["json"]},
        "loggers": {
            "_granian": {
                "level": level,
                "handlers": ["json"],
                "propagate": False,
                "filters": ["thread_advice"],
            },
            "granian.access": {"level": "WARNING", "handlers": ["json"], "propagate": False},
            # The driver logs every failed reconnection with a traceback; the store says it once, plainly.
            "cassandra": {"level": "ERROR"},
        },
    }


def worker_app():
    """The app of one worker process (Granian calls this in the worker, after the fork)."""
    from gateway.app import create_app
    from gateway.services import EXTENSION

    _forget_dead_workers()
    app = create_app(Settings.from_env())
    services = app.extensions[EXTENSION]
    _warm_up(services)
    # Granian's workers end through multiprocessing, which runs its finalizers (not atexit) on the way out.
    multiprocessing.util.Finalize(services, _worker_exit, args=(services,), exitpriority=10)
    return app


def _warm_up(services) -> None:
    """Connect to the model server and Cassandra now rather than on the first request.

    Starting the store also starts shipping the records a previous process left pending in the write-ahead
    log, so predictions logged before a restart reach Cassandra even if no request comes.
    """
    settings = services.settings

    def run() -> None:
        steps = {
            "model server": lambda: services.model_client.model_status(label=settings.model_label),
            "Cassandra": lambda: services.store.ping(),
        }
        for name, step in steps.items():
            try:
                step()
            except Exception as exc:  # /readyz reports it; requests answer clear errors meanwhile
                log.warning("warm-up: %s not reachable yet: %s", name, exc)

    threading.Thread(target=run, name="warm-up", daemon=True).start()


def _worker_exit(services) -> None:
    """Close the store (flushes its writes), drop this worker's live metrics, write the last log lines."""
    services.close()
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid(), directory)
    logging.shutdown()


def _forget_dead_workers() -> None:
    """Live gauges of workers that died without cleaning up (killed) must not count in `/metrics`."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return
    from prometheus_client import multiprocess

    for path in Path(directory).glob("gauge_live*_*.db"):
        match = re.search(r"_(\d+)\.db$", path.name)
        if match and not process_alive(int(match.group(1))):
            multiprocess.mark_process_dead(int(match.group(1)), directory)


def build_server(settings: Settings):
    from granian.constants import Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.server import Server

    return Server(
        "gateway.server:worker_app",
        factory=True,
        interface=Interfaces.WSGI,
        address=settings.host,
        port=settings.port,
        workers=settings.workers,
        blocking_threads=settings.threads,
        loop=Loops.asyncio,
        http1_settings=HTTP1Settings(max_buffer_size=HEADER_BUFFER_BYTES),
        websockets=False,
        log_dictconfig=logging_config(settings.log_level),
        log_level=settings.log_level.lower(),
        log_access=False,
        workers_kill_timeout=settings.graceful_timeout_s,
        workers_lifetime=settings.worker_lifetime_s or None,
        respawn_failed_workers=True,
        respawn_interval=1.0,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mnist-gateway",
        description="Run the MNIST gateway (Flask under Granian's WSGI server). Settings come from the "
        "environment (see docs/gateway.md); the options below override them.",
    )
    parser.add_argument("--host", help="address to bind (GATEWAY_HOST, default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port to bind (GATEWAY_PORT, default 8080)")
    parser.add_argument("--workers", type=int, help="worker processes (GATEWAY_WORKERS, default 1)")
    parser.add_argument("--threads", type=int, help="threads per worker (GATEWAY_THREADS, default 16)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for flag, name in (
        ("host", "GATEWAY_HOST"),
        ("port", "GATEWAY_PORT"),
        ("workers", "GATEWAY_WORKERS"),
        ("threads", "GATEWAY_THREADS"),
    ):
        if getattr(args, flag) is not None:
            os.environ[name] = str(getattr(args, flag))  # the workers read the same environment
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"mnist-gateway: error: {exc}", file=sys.stderr)
        return 2
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Before anything imports prometheus_client: workers then share their samples through files here.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mnist-gateway-metrics-")
    build_server(settings).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())

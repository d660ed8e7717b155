"""``mnist-serve``: parse flags (before TensorFlow is imported, so --help and bad flags answer at once),
start the server, serve until SIGTERM/SIGINT, stop gracefully."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

from serving.local_server import logs
from serving.local_server.config import load_startup_files
from serving.local_server.errors import StartupError
from serving.local_server.flags import parse_flags


def main(argv: Sequence[str] | None = None) -> int:
    try:
        flags = parse_flags(argv)
    except StartupError as exc:
        print(f"mnist-serve: error: {exc}", file=sys.stderr)
        return 2
    logs.configure(flags.log_format, flags.log_level)

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        files = load_startup_files(
            model_config_file=flags.model_config_file,
            model_name=flags.model_name,
            model_base_path=flags.model_base_path,
            enable_batching=flags.enable_batching,
            batching_parameters_file=flags.batching_parameters_file,
            monitoring_config_file=flags.monitoring_config_file,
        )
    except StartupError as exc:
        print(f"mnist-serve: error: {exc}", file=sys.stderr)
        return 2

    from training.quiet import import_tensorflow, wants_quiet

    # Only after the cheap checks; CUDA probing and NodeDef warnings stay off the terminal unless --verbose.
    import_tensorflow(quiet=wants_quiet(flags.verbose))
    from serving.local_server.server import ModelServer

    try:
        server = ModelServer(flags, files)
        if stop.is_set():
            return 0
        server.start()
    except StartupError as exc:
        print(f"mnist-serve: error: {exc}", file=sys.stderr)
        return 1
    while not stop.wait(0.2):
        pass
    server.stop()
    # Everything is unloaded and flushed; skip TensorFlow's interpreter teardown, which takes seconds.
    logging.shutdown()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())

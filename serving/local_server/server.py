"""Wiring: flags -> config -> model manager -> gRPC and REST front ends, and an orderly stop."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from serving.local_server import config as config_files
from serving.local_server.batching import Batcher
from serving.local_server.config import BatchingOptions, ConfigError, ModelConfig
from serving.local_server.core import ServingCore
from serving.local_server.errors import ServingError, StartupError
from serving.local_server.flags import ServerFlags
from serving.local_server.grpc_service import create_grpc_server
from serving.local_server.health import ModelHealth
from serving.local_server.metrics import ServerMetrics
from serving.local_server.model_manager import ModelManager
from serving.local_server.rest_api import RestApi, RestServer
from serving.local_server.servable import Servable, load_servable

log = logging.getLogger(__name__)


class ServableFactory:
    """Loads a version (warmup included) and, with batching on, puts a Batcher in front of each signature."""

    def __init__(
        self, batching: BatchingOptions | None, metrics: ServerMetrics, *, warmup: bool = True
    ) -> None:
        self._batching = batching
        self._warmup = warmup
        self._metrics = metrics
        self._batchers: dict[int, list[Batcher]] = {}
        self._lock = threading.Lock()

    def load(self, name: str, version: int, path: Path, model_config: ModelConfig) -> Servable:
        servable = load_servable(name, version, path, warmup=self._warmup)
        if self._batching is not None:
            batchers = []
            for signature in servable.signatures.values():
                if not signature.batchable:
                    log.info(
                        "signature not batchable (no leading batch dimension)",
                        extra={"model": name, "version": version, "signature": signature.key},
                    )
                    continue
                batcher = Batcher(
                    signature.run,
                    self._batching,
                    name=f"batch-{name}-{version}",
                    observer=self._observer(name),
                )
                signature.batched_run = batcher.run
                batchers.append(batcher)
            with self._lock:
                self._batchers[id(servable)] = batchers
        return servable

    def unload(self, servable: object) -> None:
        with self._lock:
            batchers = self._batchers.pop(id(servable), [])
        for batcher in batchers:
            batcher.stop()

    def _observer(self, name: str):
        def observe(rows: int, padded: int, waited: float) -> None:
            self._metrics.batch_size.labels(name).observe(padded)
            self._metrics.batch_queue_delay.labels(name).observe(waited)

        return observe


class ConfigFileWatcher:
    """--model_config_file_poll_wait_seconds: re-read the file and apply it when its content changed (and at
    every poll while its labels wait for their versions to load)."""

    def __init__(self, path: Path, manager: ModelManager, seconds: float, initial_text: str) -> None:
        self._path = path
        self._manager = manager
        self._seconds = seconds
        self._last: str | None = initial_text  # None: the config applies only in part, apply it again
        self._waiting = ""  # the text whose labels wait for their versions: reported once, not every poll
        self._undecodable = ""  # why the file last failed to decode: reported once, not every poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="config-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._seconds):
            try:
                self._poll()
            except Exception:  # whatever went wrong, later edits of the file must still be applied
                log.exception("model config file poll failed", extra={"path": str(self._path)})

    def _poll(self) -> None:
        try:
            text = self._path.read_text(encoding="utf-8")
        except OSError as exc:
            log.warning(
                "cannot re-read model config file", extra={"path": str(self._path), "error": str(exc)}
            )
            return
        except UnicodeDecodeError as exc:  # a bad edit like any other: the old config keeps serving
            error = f"the file is not UTF-8 text: {exc}"
            if error != self._undecodable:
                self._undecodable = error
                log.error("model config file rejected", extra={"path": str(self._path), "error": error})
            return
        self._undecodable = ""
        if text == self._last:
            return
        try:
            config = config_files.parse_model_server_config(text)
            waiting = self._manager.reload_config(config, labels_may_wait=True)
        except (ConfigError, ServingError) as exc:
            self._last, self._waiting = text, ""  # report a bad edit once, not every poll
            log.error("model config file rejected", extra={"path": str(self._path), "error": str(exc)})
            return
        if waiting is None:
            self._last, self._waiting = text, ""
            log.info("model config file reloaded", extra={"path": str(self._path)})
            return
        # A label moves to a version that is loading now (both pushes of a promote between two polls): the
        # versions applied, the labels follow at a later poll. Neither this text nor the previous one is what
        # runs, so the next poll applies whatever the file holds then.
        self._last = None
        if text != self._waiting:
            self._waiting = text
            log.warning(
                "model config file applied, its labels wait for their versions",
                extra={"path": str(self._path), "error": waiting},
            )


class ModelServer:
    """A running mnist-serve: ``start()`` loads the models and opens the ports, ``stop()`` undoes it."""

    def __init__(self, flags: ServerFlags, files: config_files.StartupFiles) -> None:
        """`files` are the flags' files, read and checked by the CLI before TensorFlow is imported."""
        self.flags = flags
        self.metrics = ServerMetrics()
        self.model_config = files.model_config
        self._config_path = Path(flags.model_config_file) if flags.model_config_file else None
        self._config_text = files.model_config_text
        self.batching = files.batching
        self.monitoring = files.monitoring
        if flags.batching_parameters_file and not flags.enable_batching:
            log.warning("--batching_parameters_file is ignored without --enable_batching")
        self.factory = ServableFactory(self.batching, self.metrics, warmup=flags.enable_model_warmup)
        self.manager = ModelManager(
            loader=self.factory.load,
            unloader=self.factory.unload,
            file_system_poll_wait_seconds=flags.file_system_poll_wait_seconds,
            allow_version_labels_for_unavailable_models=flags.allow_version_labels_for_unavailable_models,
            metrics=self.metrics,
        )
        self.core = ServingCore(self.manager, max_tensor_bytes=flags.max_tensor_bytes)
        self.health = ModelHealth(self.manager)
        self.grpc_port: int | None = None
        self.rest_port: int | None = None
        self._grpc = None
        self._rest: RestServer | None = None
        self._watcher: ConfigFileWatcher | None = None

    def start(self) -> None:
        try:
            self.manager.start(self.model_config)
        except ServingError as exc:
            raise StartupError(f"{exc.code_name}: {exc.message}") from None
        address = self.flags.bind_address
        try:
            self._grpc, self.grpc_port = create_grpc_server(
                self.core,
                self.metrics,
                address=address,
                port=self.flags.port,
                max_threads=self.flags.grpc_max_threads,
                health=self.health,
                channel_arguments=self.flags.grpc_channel_arguments,
            )
            if self.flags.rest_api_port:
                api = RestApi(self.core, self.metrics, self.monitoring)
                self._rest = RestServer(
                    api,
                    address=address,
                    port=self.flags.rest_api_port,
                    num_threads=self.flags.rest_api_num_threads,
                    max_body_bytes=self.flags.rest_api_max_body_bytes,
                    max_connections=self.flags.rest_api_max_connections,
                    request_timeout=self.flags.rest_api_timeout_in_ms / 1000,
                )
                self._rest.start()
                self.rest_port = self._rest.port
        except OSError as exc:
            self.stop()
            raise StartupError(f"cannot open the server ports: {exc}") from None
        if self._config_path is not None and self.flags.model_config_file_poll_wait_seconds > 0:
            self._watcher = ConfigFileWatcher(
                self._config_path,
                self.manager,
                self.flags.model_config_file_poll_wait_seconds,
                self._config_text,
            )
            self._watcher.start()
        log.info("Running gRPC ModelServer", extra={"address": f"{address}:{self.grpc_port}"})
        if self.rest_port:
            log.info(
                "Exporting HTTP/REST API",
                extra={
                    "address": f"{address}:{self.rest_port}",
                    "metrics_path": self.monitoring.prometheus_path,
                },
            )

    def stop(self, grace_seconds: float = 5.0) -> None:
        """Report NOT_SERVING (load balancers pick other replicas), stop taking calls, let in-flight ones
        finish (up to ``grace_seconds``), unload everything."""
        self.health.drain()
        if self._watcher is not None:
            self._watcher.stop()
        if self._rest is not None:
            self._rest.stop()
        if self._grpc is not None:
            self._grpc.stop(grace_seconds).wait()
        self.manager.stop()
        log.info("server stopped")

"""The standard gRPC health service (grpc.health.v1.Health): which replicas a client may send calls to.

A client-side load balancer (the gateway's `round_robin` with `healthCheckConfig`) watches one service name
and only picks replicas that report SERVING for it. Names and their rule:

- `<model>:<label>`: the version the label names is AVAILABLE (the gateway watches MODEL_NAME:MODEL_LABEL);
- `<model>`: the model has an AVAILABLE version (a request naming no version is answered);
- `""` (the whole server, for `grpc_health_probe` or a Kubernetes gRPC probe): every model of the config has
  an AVAILABLE version. A label that points nowhere does not take the whole server out.

Names of models or labels that leave the config turn NOT_SERVING. On shutdown every name turns NOT_SERVING
before the port closes, so clients stop picking the replica while its in-flight calls finish.

Watchers are told of a change by one sender thread, outside the servicer's lock: the library's `set` sends
to every watcher while holding the lock that a closing watch needs, which deadlocks when a watcher goes away
during the send, and it would make the model manager wait for the slowest watcher.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from grpc_health.v1 import health, health_pb2

from serving.local_server.model_manager import ModelManager

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
log = logging.getLogger(__name__)


class _Servicer(health.HealthServicer):
    """`HealthServicer` (non-blocking Watch) whose status changes reach watchers from a sender thread."""

    def __init__(self) -> None:
        super().__init__()
        self._sender = ThreadPoolExecutor(1, thread_name_prefix="health-watch")

    def set(self, service: str, status: int) -> None:
        with self._lock:
            if not self._gracefully_shutting_down:
                self._change(service, status)

    def enter_graceful_shutdown(self) -> None:
        # One step: a `set` from the model manager (which refreshes while the server drains) can come
        # neither between two names nor after the last one.
        with self._lock:
            for service in list(self._server_status):
                self._change(service, NOT_SERVING)
            self._gracefully_shutting_down = True

    def _on_close_callback(self, send_response_callback, service: str):
        """The library's, but a name nobody watches any more is forgotten (any client may watch any name:
        the library kept every one, however long, for good)."""

        def closed() -> None:
            with self._lock:
                watchers = self._send_response_callbacks.get(service)
                if watchers is not None:
                    watchers.discard(send_response_callback)
                    if not watchers:
                        del self._send_response_callbacks[service]
            send_response_callback(None)

        return closed

    def _change(self, service: str, status: int) -> None:
        """Called holding the lock: queued for the watchers in the order the changes are made (the sender
        thread never takes this lock, so queueing here cannot deadlock)."""
        self._server_status[service] = status
        for send in self._send_response_callbacks.get(service, ()):
            self._sender.submit(_send, send, health_pb2.HealthCheckResponse(status=status))


def _send(send, response) -> None:
    try:
        send(response)
    except Exception as exc:  # a watcher that went away: its stream is closed, nothing to tell
        log.debug("a health watcher was not told: %s", exc)


def service_name(model: str, label: str | None = None) -> str:
    """The health service name of a model, or of one of its labels (gateway/model_client.py has a copy)."""
    return f"{model}:{label}" if label else model


def serving_names(availability: dict[str, tuple[frozenset[int], dict[str, int]]]) -> dict[str, bool]:
    """{health service name: SERVING?} from ModelManager.availability()."""
    models = {name: bool(available) for name, (available, _) in availability.items()}
    names: dict[str, bool] = {"": bool(models) and all(models.values()), **models}
    for model, (available, labels) in availability.items():
        for label, version in labels.items():
            names[service_name(model, label)] = version in available
    return names


class ModelHealth:
    """Keeps a HealthServicer in step with the model manager (`refresh` is its state listener)."""

    def __init__(self, manager: ModelManager) -> None:
        self.servicer = _Servicer()
        self._manager = manager
        self._lock = threading.Lock()
        self._last: dict[str, bool] = {}
        manager.add_listener(self.refresh)
        self.refresh()  # the servicer starts with "" SERVING: not before a model is

    def refresh(self) -> None:
        names = serving_names(self._manager.availability())
        with self._lock:
            gone = {name: False for name in self._last if name not in names}
            for name, serving in {**gone, **names}.items():
                if self._last.get(name) != serving:
                    self.servicer.set(name, SERVING if serving else NOT_SERVING)
            self._last = {**gone, **names}

    def drain(self) -> None:
        """NOT_SERVING for every name from now on (later changes are ignored)."""
        self.servicer.enter_graceful_shutdown()

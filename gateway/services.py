"""The app's resources in one object: settings, metrics, and the model client (and the batcher sharing its
calls), store, rollout state cache and shadow worker, made on first use.

Made lazily so that server workers open their gRPC channel and Cassandra session (and start their shadow
thread) after the fork.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from flask import current_app

from gateway.metrics import GatewayMetrics
from gateway.settings import Settings

log = logging.getLogger("gateway")

EXTENSION = "mnist_gateway"


class Services:
    """The app's resources: settings, metrics, and the model client and store (made on first use)."""

    def __init__(
        self, settings: Settings, metrics: GatewayMetrics, *, model_client: Any = None, store: Any = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._model_client = model_client
        self._store = store
        self._rollouts: Any = None
        self._shadow: Any = None
        self._predictor: Any = None
        self._owned: list[Any] = []
        self._lock = threading.Lock()

    @property
    def model_client(self) -> Any:
        if self._model_client is None:
            with self._lock:
                if self._model_client is None:
                    from gateway.model_client import ModelClient

                    s = self.settings
                    client = ModelClient(
                        s.model_server_target,
                        timeout_s=s.model_timeout_s,
                        model_name=s.model_name,
                        retries=s.model_retries,
                        health_label=s.model_label,
                    )
                    self._owned.append(client)
                    self._model_client = client
        return self._model_client

    @property
    def predictor(self) -> Any:
        """Images to the model server one by one, concurrent requests sharing a call (gateway/batching.py)."""
        if self._predictor is None:
            client = self.model_client  # made under the same (non-reentrant) lock: before taking it
            with self._lock:
                if self._predictor is None:
                    from gateway.batching import PredictBatcher

                    s = self.settings
                    self._predictor = PredictBatcher(
                        client.predict,
                        max_batch=s.model_max_batch,
                        lanes=s.model_concurrency,
                        # a queued request waits for the call in flight and its own, each within the deadline
                        wait_s=2 * s.model_timeout_s + 1,
                        observe_batch=self.metrics.model_batch_size.observe,
                    )
        return self._predictor

    @property
    def store(self) -> Any:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    from gateway.store import PredictionStore
                    from gateway.store.cluster import Credentials

                    s = self.settings
                    store = PredictionStore(
                        hosts=list(s.cassandra_hosts),
                        port=s.cassandra_port,
                        keyspace=s.cassandra_keyspace,
                        spool_dir=s.spool_dir,
                        ttl_seconds=s.cassandra_ttl_days * 86400,
                        local_dc=s.cassandra_local_dc or None,
                        credentials=(
                            Credentials(s.cassandra_username, s.cassandra_password)
                            if s.cassandra_username
                            else None
                        ),
                        consistency=s.cassandra_consistency_level,
                        write_linger=s.cassandra_write_linger_ms / 1000,
                        max_log_bytes=s.wal_max_bytes,
                        sync=s.wal_sync == "fsync",
                    )
                    # The server kills a worker GATEWAY_GRACEFUL_TIMEOUT_S after asking it to stop: flush the
                    # log to Cassandra until a second before that.
                    self._owned.append(_Closing(store, timeout=max(1, s.graceful_timeout_s - 1)))
                    self._store = store
        return self._store

    @property
    def rollouts(self) -> Any:
        """The rollout state of the gateway's model, re-read at most every GATEWAY_ROLLOUT_REFRESH_S."""
        if self._rollouts is None:
            with self._lock:
                if self._rollouts is None:
                    from gateway.rollout import RolloutCache

                    self._rollouts = RolloutCache(
                        lambda model: self.store.read_rollout(model, timeout=1.0),
                        refresh_s=self.settings.rollout_refresh_s,
                    )
        return self._rollouts

    @property
    def shadow(self) -> Any:
        """The worker answering shadow copies, its queue bounded by GATEWAY_SHADOW_QUEUE."""
        if self._shadow is None:
            with self._lock:
                if self._shadow is None:
                    from gateway.prediction import answer_shadow
                    from gateway.shadow import ShadowWorker

                    worker = ShadowWorker(
                        lambda copy: answer_shadow(self, copy),
                        maxsize=self.settings.shadow_queue,
                        counter=self.metrics.shadow_copies,
                    )
                    self._owned.append(worker)
                    self._shadow = worker
        return self._shadow

    def close(self) -> None:
        """Close what the app made (the store flushes its in-flight writes); what was handed in stays open."""
        with self._lock:
            owned, self._owned = self._owned, []
        for resource in reversed(owned):
            try:
                resource.close()
            except Exception:
                log.exception("closing %s failed", type(getattr(resource, "resource", resource)).__name__)


class _Closing:
    """A resource whose `close` takes arguments, closed with them."""

    def __init__(self, resource: Any, **close_args: Any) -> None:
        self.resource, self.close_args = resource, close_args

    def close(self) -> None:
        self.resource.close(**self.close_args)


def current() -> Services:
    """The running app's services (inside a request or app context)."""
    return current_app.extensions[EXTENSION]

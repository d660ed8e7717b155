"""Prometheus metrics in the server's own registry (so tests and two servers in one process don't clash).

Names follow TF Serving's where it has one (``:tensorflow:serving:request_count``, ``request_latency``,
``batching_session:...``), rendered on the REST port at the monitoring path
(``/monitoring/prometheus/metrics`` by default, as in TF Serving's monitoring config).
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

disable_created_metrics()  # the *_created series only add noise to a scrape

STATES = ("START", "LOADING", "AVAILABLE", "UNLOADING", "END")


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.request_count = Counter(
            ":tensorflow:serving:request_count",
            "Predict and metadata requests by model, API and outcome.",
            ["model_name", "API", "entrypoint", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            ":tensorflow:serving:request_latency_seconds",
            "End-to-end request latency (seconds).",
            ["model_name", "API", "entrypoint"],
            registry=r,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
        )
        self.batch_size = Histogram(
            ":tensorflow:serving:batching_session:processed_batch_size",
            "Rows per executed batch (padded).",
            ["model_name"],
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
        )
        self.batch_queue_delay = Histogram(
            ":tensorflow:serving:batching_session:queuing_latency_seconds",
            "Time the first request of a batch waited before the batch ran.",
            ["model_name"],
            registry=r,
            buckets=(0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
        )
        self.version_state = Gauge(
            "mnist_serve_model_version_state",
            "1 for the state a model version is in.",
            ["model_name", "version", "state"],
            registry=r,
        )
        self.load_seconds = Histogram(
            "mnist_serve_model_load_seconds",
            "Time to load a version, warmup included.",
            ["model_name"],
            registry=r,
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
        )
        self.load_failures = Counter(
            "mnist_serve_model_load_failures",
            "Versions that failed to load.",
            ["model_name"],
            registry=r,
        )
        self.config_reloads = Counter(
            "mnist_serve_config_reloads",
            "Config reloads by outcome.",
            ["status"],
            registry=r,
        )

    def set_state(self, model: str, version: int, state: str) -> None:
        for name in STATES:
            self.version_state.labels(model, str(version), name).set(1 if name == state else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)

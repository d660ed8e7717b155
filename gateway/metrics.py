"""Prometheus metrics on a registry the app owns (a test builds a fresh app and sees fresh counters).

With one worker (the default: scale with threads and replicas) the app's registry is what `/metrics`
serves. With `GATEWAY_WORKERS` > 1, `mnist-gateway` sets `PROMETHEUS_MULTIPROC_DIR` before anything imports
prometheus_client; every worker then writes its samples to files there and `/metrics` merges them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

log = logging.getLogger("gateway.metrics")

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.02,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


# Label values come from a closed set: a client choosing them could make a new time series per request.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"
UNMATCHED_ROUTE = "<unmatched>"
MAX_VERSION_LABELS = 32  # model versions per metric with their own series; later ones count as `other`
OTHER_VERSION = "other"


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else OTHER_METHOD


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gateway_http_requests",
            "HTTP requests answered, by route template and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "gateway_http_request_duration_seconds",
            "Time to answer a request, by route template",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.preprocess_seconds = Histogram(
            "gateway_preprocess_duration_seconds",
            "Time to decode an upload and make the 28x28 model input",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_seconds = Histogram(
            "gateway_model_duration_seconds",
            "Time to the model's answer: the (possibly shared) gRPC Predict call, retries included",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_batch_size = Histogram(
            "gateway_model_batch_size",
            "Images per Predict call (concurrent requests for one version share a call: gateway/batching.py)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000),
            registry=r,
        )
        self.predict_seconds = Histogram(
            "gateway_predict_total_duration_seconds",
            "Time of a whole prediction (read, preprocess, model, record)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "gateway_predictions",
            "Predictions answered, by model version and digit",
            ["model", "version", "digit"],
            registry=r,
        )
        self.model_errors = Counter(
            "gateway_model_errors", "Predict calls that failed, by error code", ["code"], registry=r
        )
        self.model_version = Gauge(
            "gateway_model_version_info",
            "1 for the model version that last answered for a label",
            ["model", "label", "version"],
            registry=r,
            multiprocess_mode="max",
        )
        self.spool_depth = Gauge(
            "gateway_spool_depth",
            "Predictions in the local write-ahead log not yet acknowledged by Cassandra",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.wal_pending_bytes = Gauge(
            "gateway_wal_pending_bytes",
            "Bytes of the local write-ahead log not yet acknowledged by Cassandra",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.wal_refused = Counter(
            "gateway_wal_refused",
            "Predictions answered 503 because the write-ahead log was full or could not be written",
            registry=r,
        )
        self.shadow_copies = Counter(
            "gateway_shadow_copies",
            "Shadow copies of requests by outcome: answered, failed, or dropped (the queue was full)",
            ["outcome"],
            registry=r,
        )
        self.feedback_labels = Counter(
            "gateway_feedback_labels",
            "First feedback labels, by the model version that made the prediction",
            ["model", "version"],
            registry=r,
        )
        self.feedback_correct = Counter(
            "gateway_feedback_correct",
            "First feedback labels that matched the prediction, by model version",
            ["model", "version"],
            registry=r,
        )
        self.feedback_corrections = Counter(
            "gateway_feedback_corrections",
            "Feedback labels an operator replaced, by model version",
            ["model", "version"],
            registry=r,
        )
        self._versions: dict[tuple[str, str], str] = {}
        self._labelled_versions: set[str] = set()
        self._lock = threading.Lock()

    def version_label(self, version: int | None) -> str:
        """A version as a label value: the first MAX_VERSION_LABELS versions seen as themselves, any later
        one as `other` (a process never makes more than that many series per metric)."""
        value = "none" if version is None else str(int(version))
        with self._lock:
            if value in self._labelled_versions:
                return value
            if len(self._labelled_versions) < MAX_VERSION_LABELS:
                self._labelled_versions.add(value)
                return value
        return OTHER_VERSION

    def count_feedback(self, model: str, version: int | None, change: str, right: bool) -> None:
        """Count a feedback label by what it changed (`first`, `same`, `corrected`)."""
        if change == "same":
            return
        labels = (model, self.version_label(version))
        if change == "corrected":
            self.feedback_corrections.labels(*labels).inc()
            return
        self.feedback_labels.labels(*labels).inc()
        if right:
            self.feedback_correct.labels(*labels).inc()

    def seen_version(self, model: str, label: str) -> int | None:
        """The version that last answered `label` in this process (None before the first answer)."""
        with self._lock:
            version = self._versions.get((model, label))
        return int(version) if version is not None and version.isdigit() else None

    def saw_model_version(self, model: str, label: str, version: int | str) -> None:
        key, version = (model, label), str(version)
        with self._lock:
            previous = self._versions.get(key)
            if previous == version:
                return
            if previous is not None:
                with contextlib.suppress(KeyError):
                    self.model_version.remove(model, label, previous)
            self._versions[key] = version
            self.model_version.labels(model, label, version).set(1)

    def render(self) -> tuple[bytes, str]:
        directory = multiprocess_dir()
        if directory:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=directory)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def init_app(app: Flask, metrics: GatewayMetrics, log_pending: Callable[[], tuple[int, int]]) -> None:
    """Count every answer; serve `/metrics`, reading what the store's log holds fresh at each scrape."""

    # The children of each label set, found once: `labels()` validates and locks on every call.
    counted: dict[tuple[str, str, int], Counter] = {}
    timed: dict[str, Histogram] = {}

    @app.after_request
    def _count(response: Response) -> Response:
        # Route templates, not raw paths, and known methods: unknown ones must not make new time series.
        rule = request.url_rule
        route = rule.rule if rule is not None else UNMATCHED_ROUTE
        key = (route, method_label(request.method), response.status_code)  # a closed set: a bounded cache
        counter = counted.get(key)
        if counter is None:
            counter = counted.setdefault(key, metrics.requests.labels(route, key[1], str(key[2])))
        counter.inc()
        started = g.get("started")
        if started is not None:
            histogram = timed.get(route)
            if histogram is None:
                histogram = timed.setdefault(route, metrics.request_seconds.labels(route))
            histogram.observe(time.perf_counter() - started)
        return response

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        try:
            records, size = log_pending()
            metrics.spool_depth.set(records)
            metrics.wal_pending_bytes.set(size)
        except Exception:  # a scrape must not fail because the store is unwell: /readyz reports that
            log.debug("the log's backlog is unavailable", exc_info=True)
        body, content_type = metrics.render()
        return Response(body, content_type=content_type)

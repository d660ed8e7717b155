"""`create_app()`: the gateway's only wiring point.

Defaults come from `Settings.from_env()`; tests pass their own `Settings` and may hand in a model client and a
prediction store (real ones pointed at test servers, or small doubles when only the HTTP layer is under test).
Whatever is not handed in is built lazily on first use, so server workers open their gRPC channel and their
Cassandra session after the fork, never before.
"""

from __future__ import annotations

import weakref
from typing import Any

from flask import Flask

from gateway import http_errors, logs, metrics, ops, ratelimit, request_limits, routes
from gateway.services import EXTENSION, Services
from gateway.settings import Settings


class GatewayFlask(Flask):
    """Flask, asking once per function whether it is a coroutine function (Flask asks for every hook and
    view on every request, through `inspect`: the answer never changes). Weak keys: a function made for
    one request (`after_this_request`) leaves the cache with it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync_functions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def ensure_sync(self, func: Any) -> Any:
        sync = self._sync_functions.get(func)
        if sync is None:
            sync = super().ensure_sync(func)
            self._sync_functions[func] = sync
        return sync


def create_app(settings: Settings | None = None, *, model_client: Any = None, store: Any = None) -> Flask:
    settings = settings or Settings.from_env()
    app = GatewayFlask(__name__, static_folder="web", static_url_path="/static")
    app.config.update(JSON_SORT_KEYS=False, SEND_FILE_MAX_AGE_DEFAULT=300)
    app.json.sort_keys = False
    app.json.compact = True
    app_metrics = metrics.GatewayMetrics()
    services_ = Services(settings, app_metrics, model_client=model_client, store=store)
    app.extensions[EXTENSION] = services_

    logs.init_app(app)
    metrics.init_app(app, app_metrics, log_pending=lambda: services_.store.pending())
    http_errors.init_app(app, retry_after_s=settings.retry_after_s)
    # After logs: a refused body still gets its request id and access line.
    request_limits.init_app(app, settings)
    routes.init_app(app)
    ratelimit.init_app(app, rate_limit=settings.rate_limit)
    ops.init_app(app)
    return app

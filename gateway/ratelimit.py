"""Per-client rate limit of the write routes (predictions and feedback), with Flask-Limiter.

Every write route shares one budget per client address (`GATEWAY_RATE_LIMIT`, e.g. `20000/minute`, or
several separated by `;`), counted in each worker's memory: with N workers a client gets up to N times the
limit, and behind a proxy the address is the proxy's. Over the limit: 429 with `Retry-After`, through the
gateway's error handler like every other error.
"""

from __future__ import annotations

import math
import time

from flask import Flask
from flask_limiter import Limiter, RequestLimit
from flask_limiter.util import get_remote_address

from gateway.errors import TooManyRequests

# The endpoints that write: a prediction is recorded, a label is stored.
WRITE_ENDPOINTS = ("predict.predict", "legacy.mnist", "predictions.feedback")


def _too_many(limit: RequestLimit) -> None:
    retry_after = max(1, math.ceil(limit.reset_at - time.time()))
    raise TooManyRequests(
        f"too many requests from this address (limit {limit.limit}); retry in {retry_after} s",
        retry_after=retry_after,
    )


def init_app(app: Flask, *, rate_limit: str) -> None:
    """Limit the write routes; call after the routes are registered."""
    limiter = Limiter(
        get_remote_address,
        app=app,
        storage_uri="memory://",
        strategy="fixed-window",  # the cheapest: one counter per client and window
        on_breach=_too_many,
        headers_enabled=False,
    )
    writes = limiter.shared_limit(rate_limit, scope="writes")
    for endpoint in WRITE_ENDPOINTS:
        app.view_functions[endpoint] = writes(app.view_functions[endpoint])

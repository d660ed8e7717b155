"""Per-client rate limit of the write routes (predictions and feedback): fixed windows in memory.

Every write route shares one budget per client address (`GATEWAY_RATE_LIMIT`, e.g. `20000/minute`, or
several separated by `;`, parsed by `limits`), counted in each worker's memory: with N workers a client gets
up to N times the limit, and behind a proxy the address is the proxy's. A client's window opens at its first
request and lasts the limit's period. Over the limit: 429 with `Retry-After` (the seconds left in the window),
through the gateway's error handler like every other error.

Counting is a dict lookup under a lock, on the request's thread: no timer thread (Flask-Limiter's in-memory
storage started one every 10 ms under load, a large part of a prediction's CPU), no per-request hooks on the
other routes. Windows that ended are dropped by the request that finds one has.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps

from flask import Flask, request
from limits import parse_many

from gateway.errors import TooManyRequests

# The endpoints that write: a prediction is recorded, a label is stored.
WRITE_ENDPOINTS = ("predict.predict", "legacy.mnist", "predictions.feedback")


@dataclass(frozen=True)
class Breach:
    limit: str  # as `limits` writes it, e.g. "20000 per 1 minute"
    retry_after_s: int  # whole seconds until the window that was exceeded ends (at least 1)


class FixedWindowLimiter:
    """Counts hits per key against one or more limits; thread-safe."""

    def __init__(self, text: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        items = sorted(parse_many(text), key=lambda item: item.get_expiry())
        if not items:
            raise ValueError(f"no rate limit in {text!r}")
        self._limits = [(item.amount, float(item.get_expiry()), str(item)) for item in items]
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[tuple[int, str], list] = {}  # (limit, key) -> [ends_at, hits]
        self._next_sweep = float("-inf")

    def hit(self, key: str) -> Breach | None:
        """Count one request of `key`; the first limit it exceeds (shortest window first), or None."""
        now = self._clock()
        with self._lock:
            if now >= self._next_sweep:
                self._sweep(now)
            for index, (amount, seconds, text) in enumerate(self._limits):
                window = self._windows.get((index, key))
                if window is None or window[0] <= now:
                    window = self._windows[(index, key)] = [now + seconds, 0]
                window[1] += 1
                if window[1] > amount:
                    return Breach(text, max(1, math.ceil(window[0] - now)))
        return None

    def tracked(self) -> int:
        """Windows held in memory (one per client and limit, until it ends)."""
        with self._lock:
            return len(self._windows)

    def _sweep(self, now: float) -> None:
        """Drop the windows that ended (called holding the lock, at most once per shortest period)."""
        self._windows = {k: w for k, w in self._windows.items() if w[0] > now}
        self._next_sweep = now + self._limits[0][1]


def init_app(app: Flask, *, rate_limit: str) -> None:
    """Limit the write routes; call after the routes are registered."""
    limiter = FixedWindowLimiter(rate_limit)

    def limited(view: Callable) -> Callable:
        @wraps(view)
        def checked(*args, **kwargs):
            breach = limiter.hit(request.remote_addr or "unknown")
            if breach is not None:
                raise TooManyRequests(
                    f"too many requests from this address (limit {breach.limit}); "
                    f"retry in {breach.retry_after_s} s",
                    retry_after=breach.retry_after_s,
                )
            return view(*args, **kwargs)

        return checked

    for endpoint in WRITE_ENDPOINTS:
        app.view_functions[endpoint] = limited(app.view_functions[endpoint])

"""JSON logs, one object per line on stderr, each carrying the request id of the request that wrote it.

The request id comes from the client's `X-Request-ID` (when it is a sane token) or is generated, is echoed in
the response's `X-Request-ID` header, and lands in every log line written while the request runs. One access
line per request (method, path, status, duration) replaces the server's access log.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import os
import queue
import re
import secrets
import sys
import time
from datetime import UTC, datetime

from flask import Flask, Response, g, has_request_context, request

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Attributes every LogRecord has; anything else passed via `extra=` is emitted as a field.
_STANDARD_ATTRS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}

access_log = logging.getLogger("gateway.access")
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # access lines at DEBUG unless they fail


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is None and has_request_context():
            request_id = g.get("request_id")
        if request_id:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key not in entry and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class BackgroundStreamHandler(logging.handlers.QueueHandler):
    """Formats on the calling thread (which has the request context), writes on a background thread.

    Under load, request threads otherwise queue on the stream handler's lock behind each other's writes to a
    pipe. The writer thread is started per process on first use, because the server configures logging in the
    parent and threads do not survive its fork; it is stopped (and the queue drained) at exit.
    """

    def __init__(self, stream=None) -> None:
        super().__init__(queue.SimpleQueue())
        self._target = logging.StreamHandler(stream or sys.stderr)
        self._pid: int | None = None
        self._listener: logging.handlers.QueueListener | None = None

    def enqueue(self, record: logging.LogRecord) -> None:
        if self._pid != os.getpid():  # Handler.handle holds self.lock here: one start per process
            self.queue = queue.SimpleQueue()
            listener = logging.handlers.QueueListener(self.queue, self._target)
            listener.start()
            atexit.register(listener.stop)
            self._listener, self._pid = listener, os.getpid()
        super().enqueue(record)

    def close(self) -> None:
        """Write what is queued (`logging.shutdown()` calls it where atexit does not run: forked workers)."""
        if self._listener is not None and self._pid == os.getpid() and self._listener._thread is not None:
            self._listener.stop()
        super().close()


def init_app(app: Flask) -> None:
    @app.before_request
    def _start() -> None:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else secrets.token_hex(16)
        g.started = time.perf_counter()

    @app.after_request
    def _finish(response: Response) -> Response:
        response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
        # Probes and scrapes are frequent and dull: log them at DEBUG.
        quiet = request.path in QUIET_PATHS and response.status_code < 400
        level = logging.DEBUG if quiet else logging.INFO
        if not access_log.isEnabledFor(level):  # the line's fields cost more than the check
            return response
        started = g.get("started")
        duration_ms = (time.perf_counter() - started) * 1000 if started else None
        fields = {
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round(duration_ms, 2) if duration_ms is not None else None,
            "client": request.remote_addr,
        }
        fields.update(g.get("log_fields", {}))
        access_log.log(level, "request", extra=fields)
        return response


def add_log_fields(**fields: object) -> None:
    """Attach fields (prediction id, digit, model version...) to this request's access log line."""
    g.setdefault("log_fields", {}).update(fields)

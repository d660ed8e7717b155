"""Operational endpoints that change something, behind `Authorization: Bearer $OPS_TOKEN`.

- `POST /ops/spool/replay`: ship the local write-ahead log to Cassandra now, without lingering (it also
  happens on its own).
- `POST /ops/log-level` `{"level": "DEBUG"}`: change this worker's log level without a restart.

With no OPS_TOKEN configured (allowed only in development) they answer 403. The token is compared in constant
time, and the endpoints are not in the web page.
"""

from __future__ import annotations

import hmac
import logging

from flask import Blueprint, Flask, jsonify, request

from gateway import request_limits, services
from gateway.errors import Forbidden, InvalidInput, Unauthorized
from gateway.settings import LOG_LEVELS

bp = Blueprint("ops", __name__, url_prefix="/ops")
log = logging.getLogger("gateway.ops")


def is_operator() -> bool:
    """Whether the request carries the ops token. A wrong or unusable one is a 401, never a silent
    downgrade to an anonymous caller; no Authorization header at all is simply not an operator."""
    if "Authorization" not in request.headers:
        return False
    token = services.current().settings.ops_token
    if not token:
        raise Forbidden("operator access is disabled: set OPS_TOKEN to enable it")
    scheme, _, given = request.headers["Authorization"].partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthorized("send 'Authorization: Bearer <OPS_TOKEN>'")
    return True


@bp.before_request
def _require_token() -> None:
    if not services.current().settings.ops_token:
        raise Forbidden("ops endpoints are disabled: set OPS_TOKEN to enable them")
    if not is_operator():
        raise Unauthorized("send 'Authorization: Bearer <OPS_TOKEN>'")


@bp.post("/spool/replay")
def replay_spool():
    svc = services.current()
    replayed = svc.store.replay_spool()
    depth = int(svc.store.spool_depth())
    svc.metrics.spool_depth.set(depth)
    log.info("spool replay requested", extra={"replayed": replayed, "spool_depth": depth})
    return jsonify({"replayed": replayed, "spool_depth": depth})


@bp.post("/log-level")
def set_log_level():
    body = request_limits.read_json()
    level = str(body.get("level", "")).upper() if isinstance(body, dict) else ""
    if level not in LOG_LEVELS:
        raise InvalidInput(f'send JSON {{"level": L}} with L one of {", ".join(LOG_LEVELS)}')
    logging.getLogger().setLevel(level)
    log.warning("log level changed", extra={"level": level})
    return jsonify({"level": level})


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

"""`/healthz`: the process answers. `/readyz`: it can do its job (model AVAILABLE, Cassandra reachable)."""

from __future__ import annotations

import logging

from flask import Blueprint, jsonify

from gateway import services
from gateway.errors import GatewayError

bp = Blueprint("health", __name__)
log = logging.getLogger("gateway.health")


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


def _check_model(svc: services.Services) -> dict:
    s = svc.settings
    try:
        versions = svc.model_client.model_status(label=s.model_label)
    except GatewayError as exc:
        return {"ok": False, "detail": exc.message, "label": s.model_label}
    except Exception as exc:  # a probe reports, it never fails the request
        log.warning("model status check failed: %s", exc)
        return {
            "ok": False,
            "detail": f"model status check failed: {type(exc).__name__}",
            "label": s.model_label,
        }
    available = [v.version for v in versions if v.state == "AVAILABLE"]
    states = ", ".join(f"v{v.version} {v.state}" for v in versions) or "no versions"
    return {
        "ok": bool(available),
        "detail": f"{s.model_name!r} label {s.model_label!r}: {states}",
        "label": s.model_label,
        "version": available[0] if available else None,
    }


def _check_store(svc: services.Services) -> dict:
    try:
        ok = bool(svc.store.ping())
    except Exception as exc:
        log.warning("cassandra ping failed: %s", exc)
        ok = False
    depth = _spool_depth(svc)
    return {"ok": ok, "detail": "reachable" if ok else "Cassandra is not reachable", "spool_depth": depth}


def _spool_depth(svc: services.Services) -> int | None:
    try:
        depth = int(svc.store.spool_depth())
    except Exception:
        return None
    svc.metrics.spool_depth.set(depth)
    return depth


@bp.get("/readyz")
def readyz():
    svc = services.current()
    checks = {"model": _check_model(svc), "cassandra": _check_store(svc)}
    ready = all(c["ok"] for c in checks.values())
    response = jsonify({"status": "ready" if ready else "not_ready", "checks": checks})
    if not ready:
        response.status_code = 503
        response.headers["Retry-After"] = str(svc.settings.retry_after_s)
    return response

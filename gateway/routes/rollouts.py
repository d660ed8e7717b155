"""A model's rollout: `GET /v1/models/<name>/rollout` (anyone) and `PUT` (the ops token).

The state lives in Cassandra (`rollouts`, `rollout_events`) so that every gateway replica applies the same
split; a PUT is a lightweight transaction on `updated_at` (a 409 when someone else wrote since) and appends
its event to the history. gateway/rollout.py validates and routes.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from flask import Blueprint, jsonify

from gateway import ops, request_limits, services
from gateway.errors import Forbidden, InvalidInput, Unauthorized
from gateway.logs import add_log_fields
from gateway.rollout import MAX_EVENTS, iso, parse_write

bp = Blueprint("rollouts", __name__)

# A model name as MODEL_NAME, `mnist-models` and TF Serving's config allow (gateway/openapi.yaml repeats it).
MODEL_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)


def model_name(name: str) -> str:
    """`name` when it is a model name (the `{name}` of every /v1/models route), else a 400."""
    if not _MODEL_NAME.fullmatch(name):
        raise InvalidInput("a model name is 1-64 letters, digits, '.', '_' or '-'")
    return name


def _view(name: str, state) -> dict:
    store = services.current().store
    effective = state.effective(datetime.now(UTC)) if state is not None else None
    return {
        "model": name,
        "state": state.to_json() if state is not None else None,
        "effective": {
            "canary_percent": effective.canary_percent if effective else 0,
            "shadow": effective.shadow if effective else False,
        },
        "events": [{**event, "at": iso(event["at"])} for event in store.rollout_events(name, MAX_EVENTS)],
    }


@bp.get("/v1/models/<name>/rollout")
def get_rollout(name: str):
    name = model_name(name)
    return jsonify(_view(name, services.current().store.read_rollout(name)))


@bp.put("/v1/models/<name>/rollout")
def put_rollout(name: str):
    if not services.current().settings.ops_token:
        raise Forbidden("changing a rollout is disabled: set OPS_TOKEN to enable it")
    if not ops.is_operator():
        raise Unauthorized("send 'Authorization: Bearer <OPS_TOKEN>'")
    name = model_name(name)
    write = parse_write(request_limits.read_json())
    stored = services.current().store.write_rollout(
        name, write.state, if_updated_at=write.if_updated_at, event=write.event
    )
    add_log_fields(
        rollout_model=name,
        rollout_action=write.event.action if write.event else "renew",
        rollout_actor=write.event.actor if write.event else None,
        rollout_status=stored.status,
        canary_version=stored.canary_version,
        canary_percent=stored.canary_percent,
    )
    return jsonify(_view(name, stored))

"""Recorded predictions: the recent ones (newest first, paginated), one by id, and feedback (true labels)."""

from __future__ import annotations

import base64
import re
import uuid

import numpy as np
from flask import Blueprint, jsonify, request

from gateway import ops, request_limits, services
from gateway.errors import InvalidInput, NotFound
from gateway.logs import add_log_fields
from gateway.prediction import png_base64
from gateway.settings import MAX_PAGE_SIZE

bp = Blueprint("predictions", __name__)

# What the API accepts, stated exactly (gateway/openapi.yaml repeats both; tests/test_one_rule.py pins them):
# a hyphenated version-1 UUID (the RFC 4122 variant), and a cursor that is the URL-safe base64 of one.
TIME_UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-1[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}$"
CURSOR_PATTERN = r"^([A-Za-z0-9_-]{8}[EFGH][A-Za-z0-9_-][CGKOSWaeimquy26-][A-Za-z0-9_-]{11})?$"
_TIME_UUID = re.compile(TIME_UUID_PATTERN)
_CURSOR = re.compile(CURSOR_PATTERN)


def parse_id(raw: str) -> uuid.UUID:
    if not _TIME_UUID.fullmatch(raw):
        raise InvalidInput("prediction ids are time UUIDs (version 1), hyphenated, as the API returns them")
    return uuid.UUID(raw)


def encode_cursor(state: bytes | None) -> str | None:
    return base64.urlsafe_b64encode(state).decode("ascii").rstrip("=") if state else None


def decode_cursor(raw: str | None) -> bytes | None:
    if not raw:
        return None
    if not _CURSOR.fullmatch(raw):
        raise InvalidInput("'cursor' is not a cursor this API returned")
    return base64.urlsafe_b64decode(raw + "==")


def iso(ts) -> str | None:
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z") if ts is not None else None


def record_json(rec, *, with_input: bool = False) -> dict:
    body = {
        "id": str(rec.id),
        "created_at": iso(rec.created_at),
        "filename": rec.filename,
        "digit": rec.digit,
        "probabilities": [round(float(p), 6) for p in rec.probabilities],
        "model": {"name": rec.model_name, "version": rec.model_version, "routing": rec.routing},
        "request_id": str(rec.request_id) if rec.request_id else None,  # a shadow copy's user prediction
        "timings_ms": {"preprocess": rec.preprocess_ms, "model": rec.model_ms, "total": rec.total_ms},
        "feedback": getattr(rec, "feedback_label", None),
    }
    if with_input and rec.input_image:
        image = np.frombuffer(rec.input_image, dtype=np.uint8).reshape(28, 28)
        body["input"] = {"width": 28, "height": 28, "png_base64": png_base64(image)}
    return body


@bp.get("/v1/predictions")
def list_predictions():
    svc = services.current()
    raw_limit = request.args.get("limit", str(svc.settings.page_size))
    limit = request_limits.whole_number(raw_limit, 1, MAX_PAGE_SIZE)
    if limit is None:
        raise InvalidInput(f"'limit' must be an integer from 1 to {MAX_PAGE_SIZE}")
    page = svc.store.recent(limit=limit, cursor=decode_cursor(request.args.get("cursor")))
    return jsonify({"items": [record_json(r) for r in page.items], "next_cursor": encode_cursor(page.cursor)})


@bp.get("/v1/predictions/<raw_id>")
def get_prediction(raw_id: str):
    prediction_id = parse_id(raw_id)
    rec = services.current().store.get(prediction_id)
    if rec is None:
        raise NotFound(
            "no prediction with this id (one recorded while Cassandra was down appears once it is back)"
        )
    return jsonify(record_json(rec, with_input=True))


@bp.post("/v1/predictions/<raw_id>/feedback")
def feedback(raw_id: str):
    """The first label wins; a different one is a 409, unless an operator (the ops token) corrects it."""
    prediction_id = parse_id(raw_id)
    body = request_limits.read_json()
    label = body.get("label") if isinstance(body, dict) else None
    if isinstance(label, float) and label.is_integer():
        label = int(label)  # JSON has one number type: 3.0 is the integer 3 (as JSON Schema says)
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 9:
        raise InvalidInput('send JSON {"label": N} with the true digit N from 0 to 9')
    correct = ops.is_operator()
    svc = services.current()
    outcome = svc.store.add_feedback(prediction_id, label, correct=correct)
    svc.metrics.count_feedback(
        outcome.model_name, outcome.model_version, outcome.change, outcome.label == outcome.predicted
    )
    add_log_fields(prediction_id=str(prediction_id), feedback_label=label, feedback_by_operator=correct)
    return jsonify({"id": str(prediction_id), "label": label})

"""`GET /v1/models/<name>/scorecard`: each version's numbers over a window (no token: no user data in it),
and `GET /rollouts`, the page that draws them (static, like `/`)."""

from __future__ import annotations

import re
from urllib.parse import urlencode

from flask import Blueprint, current_app, jsonify, redirect, request, send_from_directory

from gateway import request_limits, scorecard, services
from gateway.errors import InvalidInput, NotFound
from gateway.routes.rollouts import model_name
from gateway.routes.web import page_headers
from gateway.scorecard_service import ScorecardService

bp = Blueprint("scorecard", __name__)
EXTENSION = "mnist_scorecards"

MAX_ASKED_VERSIONS = 8
# `?versions=`: 1-8 versions, comma-separated, each 1-18 digits without a leading zero (gateway/openapi.yaml
# repeats it).
VERSIONS_PATTERN = r"^[1-9][0-9]{0,17}(,[1-9][0-9]{0,17}){0,7}$"
_VERSIONS = re.compile(VERSIONS_PATTERN)


@bp.record_once
def _make_service(state) -> None:
    state.app.extensions[EXTENSION] = ScorecardService()


def parse_window(raw: str | None) -> int:
    if raw is None:
        return scorecard.DEFAULT_WINDOW_S
    window = request_limits.whole_number(raw, scorecard.MIN_WINDOW_S, scorecard.MAX_WINDOW_S)
    if window is None:
        raise InvalidInput(
            f"'window' must be an integer number of seconds from {scorecard.MIN_WINDOW_S} "
            f"to {scorecard.MAX_WINDOW_S} (7 days)"
        )
    return window


def parse_versions(raw: str | None) -> tuple[int, ...]:
    if raw is None:
        return ()
    if not _VERSIONS.fullmatch(raw):
        raise InvalidInput(
            f"'versions' must be 1 to {MAX_ASKED_VERSIONS} model versions (positive integers), "
            "separated by commas"
        )
    return tuple(dict.fromkeys(int(v) for v in raw.split(",")))


@bp.get("/v1/models/<name>/scorecard")
def get_scorecard(name: str):
    svc = services.current()
    name = model_name(name)
    window_s = parse_window(request.args.get("window"))
    asked = parse_versions(request.args.get("versions"))
    if name != svc.settings.model_name:
        raise NotFound(f"this gateway serves the model {svc.settings.model_name!r} only")
    answer = current_app.extensions[EXTENSION].card(svc, window_s, asked)
    response = jsonify(answer)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/rollouts")
def rollouts_page():
    """The page, for the model named by `?model=`: without one, a redirect to the gateway's model."""
    if "model" not in request.args:
        return redirect(f"/rollouts?{urlencode({'model': services.current().settings.model_name})}")
    return page_headers(send_from_directory(current_app.static_folder, "rollouts.html", max_age=0))

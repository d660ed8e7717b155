"""The web page (`GET /`, assets under `/static/`) and the API description (`GET /openapi.json`)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, send_from_directory

from gateway.openapi import openapi_spec

bp = Blueprint("web", __name__)
# Loaded (and checked) when the routes are imported, so a broken document stops the gateway at start.
openapi_spec()


@bp.get("/")
def index():
    return page_headers(send_from_directory(current_app.static_folder, "index.html", max_age=0))


def page_headers(response):
    """The headers of an HTML page: everything it needs is served from here, forbid anything else (no CDN,
    no inline script)."""
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("/openapi.json")
def openapi():
    return jsonify(openapi_spec())

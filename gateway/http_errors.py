"""Every error leaves the gateway as `{"error": {"code": ..., "message": ...}}` with the right status.

Domain errors (gateway/errors.py) carry their own status; werkzeug's HTTP errors (404, 405, malformed
requests) keep theirs, except its bare 413s, which become the domain error of the limit they came from
(gateway/request_limits.py); anything else is a 500 whose details go to the log
(with the request id) and never to the client.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from gateway import request_limits
from gateway.errors import GatewayError

log = logging.getLogger("gateway.errors")

# werkzeug's names are fine as titles but not as stable machine codes.
_HTTP_CODES = {
    400: "invalid_input",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    411: "length_required",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    429: "too_many_requests",
    431: "headers_too_large",
}


def error_response(
    status: int, code: str, message: str, *, retry_after: int | None = None, headers: dict | None = None
) -> Response:
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    if retry_after is not None:
        response.headers["Retry-After"] = str(int(retry_after))
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def init_app(app: Flask, *, retry_after_s: int) -> None:
    @app.errorhandler(GatewayError)
    def _gateway_error(exc: GatewayError) -> Response:
        retry_after = exc.retry_after
        if exc.status == 503 and retry_after is None:
            retry_after = retry_after_s
        if exc.status >= 500:
            log.warning(
                "request failed: %s", exc.message, extra={"error_code": exc.code, "status": exc.status}
            )
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(exc.status, exc.code, exc.message, retry_after=retry_after, headers=headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        if isinstance(exc, RequestEntityTooLarge):
            return _gateway_error(request_limits.too_large(exc, app.config))
        status = exc.code or 500
        if status == 404:
            message = "no such resource"
        elif status == 405:
            allowed = ", ".join(sorted(exc.valid_methods or [])) if hasattr(exc, "valid_methods") else ""
            message = (
                f"method not allowed here (allowed: {allowed})" if allowed else "method not allowed here"
            )
        else:
            message = exc.description or exc.name
        code = _HTTP_CODES.get(status, "internal" if status >= 500 else "http_error")
        response = error_response(status, code, message)
        for name, value in exc.get_headers():
            if name.lower() not in ("content-type", "content-length"):
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unexpected error")
        return error_response(
            500, "internal", "internal error; the request id in the X-Request-ID header finds it in the logs"
        )

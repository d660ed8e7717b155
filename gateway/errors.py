"""The gateway's domain errors, each mapped to its HTTP status in one place.

Code anywhere in the gateway raises these where a problem is known; the app's error handler turns them into
`{"error": {"code": ..., "message": ...}}` with `status`; every 503 carries `Retry-After`: the error's own
`retry_after` when it sets one, else GATEWAY_RETRY_AFTER_S.
Messages are shown to clients: they say what is wrong and never carry a stack trace or a server path.
"""

from __future__ import annotations


class GatewayError(Exception):
    status: int = 500
    code: str = "internal"

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class InvalidInput(GatewayError):
    """The request is malformed: a missing field, an unreadable image, a bad parameter."""

    status = 400
    code = "invalid_input"


class Unauthorized(GatewayError):
    """An operational endpoint was called without the right OPS_TOKEN."""

    status = 401
    code = "unauthorized"


class Forbidden(GatewayError):
    """An operator route (or an operator's feedback correction) was called while OPS_TOKEN is empty: operator
    access is disabled, whatever the token."""

    status = 403
    code = "forbidden"


class NotFound(GatewayError):
    status = 404
    code = "not_found"


class ModelVersionNotFound(NotFound):
    """The model server is up but does not serve the label or version the caller asked for: the caller's
    choice, not an outage (no Retry-After). When the gateway's own configured label is missing, the route
    turns this into ModelUnavailable instead: then the service really cannot answer anyone."""

    code = "model_version_not_found"


class Conflict(GatewayError):
    """The request contradicts what is already recorded (a second, different feedback label)."""

    status = 409
    code = "conflict"


class TooManyRequests(GatewayError):
    """A client sent more requests to a write route than its rate limit allows; retry after `retry_after`."""

    status = 429
    code = "too_many_requests"


class PayloadTooLarge(GatewayError):
    """Something in the request is over a limit; the subclasses say which (their messages name the limit
    and the setting that moves it: gateway/request_limits.py)."""

    status = 413
    code = "payload_too_large"


class BodyTooLarge(PayloadTooLarge):
    """The request body is over GATEWAY_MAX_UPLOAD_BYTES."""


class ImageTooLarge(PayloadTooLarge):
    """The decoded image has more pixels than GATEWAY_MAX_IMAGE_PIXELS."""


class FormFieldTooLarge(PayloadTooLarge):
    """A multipart form field other than a file (or a part's headers) is over GATEWAY_MAX_FORM_FIELD_BYTES."""


class TooManyFormParts(PayloadTooLarge):
    """The multipart form has more parts than GATEWAY_MAX_FORM_PARTS."""


class UnsupportedMediaType(GatewayError):
    """The upload is not an image format the gateway reads, or a JSON route's body is not declared JSON."""

    status = 415
    code = "unsupported_media_type"


class ModelUnavailable(GatewayError):
    """The model server cannot answer now (down, overloaded, deadline exceeded, the model or the configured
    label not loaded yet)."""

    status = 503
    code = "model_unavailable"


class Overloaded(GatewayError):
    """The gateway is busy with other costly work (decoding large pictures) and cannot take this now."""

    status = 503
    code = "overloaded"

    def __init__(self, message: str, *, retry_after: int | None = 1) -> None:
        super().__init__(message, retry_after=retry_after)


class StoreUnavailable(GatewayError):
    """A read from Cassandra failed, or the store's local log cannot take a prediction (full, disk error)."""

    status = 503
    code = "store_unavailable"


class ModelError(GatewayError):
    """The model server rejected a request the gateway built: a bug or a contract drift, not the client's
    fault."""

    status = 502
    code = "model_error"

"""Every bound on what a client sends, applied in one place, and a truthful 413 for each.

    init_app(app, settings)     # the body and form limits into Flask's config, the body's checked up front
    read_body()                 # the raw body, within the limit
    read_json()                 # the JSON body, within the limit (None: malformed, too deep; a 415 when
                                #   not sent as JSON, a 400 when an object repeats a key)
    whole_number(raw, low, high)  # a query string's number, never converted while absurdly long
    too_large(exc, config)      # werkzeug's bare 413 -> the PayloadTooLarge that says which limit

The file part of a multipart upload is bounded by the body limit alone (GATEWAY_MAX_UPLOAD_BYTES); other form
fields and each part's headers by GATEWAY_MAX_FORM_FIELD_BYTES; the number of parts by GATEWAY_MAX_FORM_PARTS.
The decoded image's pixel count (GATEWAY_MAX_IMAGE_PIXELS) is checked by the preprocessing; the request head
by the HTTP server (gateway/server.py). docs/gateway.md lists every limit.

Werkzeug's multipart decoder applies the form field limit to its own buffer too, which holds one read chunk
(64 KiB) plus a boundary's length of the previous one while a file part streams through: a form field limit
near 64 KiB refuses ordinary uploads depending on their bytes. Settings keep it at MIN_FORM_FIELD_BYTES or
more.
"""

from __future__ import annotations

import json
from types import CodeType, TracebackType

from flask import Flask, current_app, request
from werkzeug import formparser, wsgi
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.sansio import multipart

from gateway.errors import (
    BodyTooLarge,
    FormFieldTooLarge,
    InvalidInput,
    PayloadTooLarge,
    TooManyFormParts,
    UnsupportedMediaType,
)
from gateway.settings import Settings

# Where werkzeug raises its bare RequestEntityTooLarge, by limit (the raising function's code object).
_BODY_SITES = {wsgi.get_input_stream.__code__, wsgi.LimitedStream.on_exhausted.__code__}
_FIELD_SITES = {multipart.MultipartDecoder.receive_data.__code__, formparser.MultiPartParser.parse.__code__}
_PARTS_SITES = {multipart.MultipartDecoder.next_event.__code__}


def init_app(app: Flask, settings: Settings) -> None:
    body_limit = settings.max_upload_bytes
    app.config.update(
        UPLOAD_LIMIT_BYTES=body_limit,
        # Werkzeug's own body limit is one byte higher: the server sets wsgi.input_terminated, and then
        # werkzeug refuses a multipart body of exactly its limit (it reads once more to see the end) and
        # cuts a streamed raw body at its limit without a word. With one byte of room, a body
        # of exactly the limit is read whole and anything longer is seen to be longer.
        MAX_CONTENT_LENGTH=body_limit + 1,
        MAX_FORM_MEMORY_SIZE=settings.max_form_field_bytes,
        MAX_FORM_PARTS=settings.max_form_parts,
    )

    @app.before_request
    def _declared_body_limit() -> None:
        if request.content_length is not None and request.content_length > body_limit:
            raise body_too_large(body_limit, request.content_length)


def body_too_large(limit: int, length: int | None) -> BodyTooLarge:
    size = f"is {length:,} bytes" if length is not None else "is over the limit"
    return BodyTooLarge(f"the request body {size}; the limit is {limit:,} bytes (GATEWAY_MAX_UPLOAD_BYTES)")


def read_body() -> bytes:
    """The raw request body, refused when a streamed (chunked) one turns out longer than the limit."""
    data = request.get_data(cache=False)
    limit = current_app.config["UPLOAD_LIMIT_BYTES"]
    if len(data) > limit:
        raise body_too_large(limit, None)
    return data


def read_json() -> object:
    """The JSON body (a streamed one held to the body limit, as uploads are), or None when it is malformed
    or nested deeper than the parser's recursion allows. A body not declared JSON (`curl -d` sends a form
    type) is a 415 that says so. An object that names a key twice is a 400: which value counts is up to each
    parser (a proxy reading the first `label` and the gateway the last would disagree), so neither is
    guessed."""
    if not request.is_json:
        declared = repr(request.mimetype) if request.mimetype else "none"
        raise UnsupportedMediaType(
            f"send the body as JSON with 'Content-Type: application/json' (got {declared})"
        )
    try:
        return json.loads(read_body(), object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError):
        return None


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        repeated = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise InvalidInput(f"the JSON body repeats the key {repeated[:40]!r}: send each key once")
    return obj


def whole_number(raw: str, low: int, high: int) -> int | None:
    """`raw` (ASCII digits, leading zeros allowed) as an integer from `low` to `high`, else None. The length
    is checked before converting: Python refuses to convert more than 4,300 digits."""
    if not (raw.isascii() and raw.isdigit()):
        return None
    digits = raw.lstrip("0") or "0"
    if len(digits) > len(str(high)):
        return None
    value = int(digits)
    return value if low <= value <= high else None


def too_large(exc: RequestEntityTooLarge, config: dict) -> PayloadTooLarge:
    """The limit werkzeug's 413 came from, told by where it was raised."""
    site = _raise_site(exc.__traceback__)
    body, field = config["UPLOAD_LIMIT_BYTES"], config["MAX_FORM_MEMORY_SIZE"]
    parts = config["MAX_FORM_PARTS"]
    if site in _BODY_SITES:  # a streamed body (one with a Content-Length was checked before reading)
        return body_too_large(body, None)
    if site in _FIELD_SITES:
        return FormFieldTooLarge(
            f"a form field or a part's headers are over the limit of {field:,} bytes "
            "(GATEWAY_MAX_FORM_FIELD_BYTES); only the image file may be larger"
        )
    if site in _PARTS_SITES:
        return TooManyFormParts(f"the form has more than {parts} parts (GATEWAY_MAX_FORM_PARTS)")
    # Raised somewhere new (a werkzeug upgrade): still name every limit it may be.
    return PayloadTooLarge(
        f"the request is over a limit: body {body:,} bytes (GATEWAY_MAX_UPLOAD_BYTES), form field "
        f"{field:,} bytes (GATEWAY_MAX_FORM_FIELD_BYTES) or {parts} form parts (GATEWAY_MAX_FORM_PARTS)"
    )


def _raise_site(tb: TracebackType | None) -> CodeType | None:
    code = None
    while tb is not None:
        code, tb = tb.tb_frame.f_code, tb.tb_next
    return code

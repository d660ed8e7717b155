"""Every limit a client can hit, just under and just over, each 413 saying which limit and its setting.

The app-level limits (body, form field, form parts, decoded pixels) run on the app over real HTTP with test
doubles for the model and the store; the page size on the real `mnist-gateway` (tests/test_gateway_uploads.py
covers the body limit there with real photos, tests/test_gateway_server.py the request head's limits).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import requests
from PIL import Image

from gateway import request_limits
from gateway.settings import MIN_FORM_FIELD_BYTES
from tests import test_gateway_http, uploads
from tests.test_gateway_http import error_of, png

make_gateway = test_gateway_http.make_gateway  # the app over real HTTP with model and store doubles

BODY_LIMIT = 256 * 1024


def form(*parts: tuple[str, str | None, bytes]) -> tuple[bytes, str]:
    """A multipart body of (name, filename or None for a text field, content) parts."""
    boundary = "limits-test-boundary"
    out = io.BytesIO()
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out.write(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode())
        out.write(content + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def post_form(gw, *parts) -> requests.Response:
    body, content_type = form(*parts)
    return requests.post(f"{gw.url}/v1/predict", data=body, headers={"Content-Type": content_type})


def digit_png(width: int, height: int) -> bytes:
    image = Image.new("L", (width, height), 255)
    image.paste(0, (width // 3, height // 4, width // 2, 3 * height // 4))
    return uploads.encode(image)


def test_the_body_limit_counts_the_whole_request(make_gateway):
    gw, model, _ = make_gateway(max_upload_bytes=BODY_LIMIT)
    image = png()
    overhead = len(form(("image", "d.png", b""))[0])
    padding = BODY_LIMIT - overhead - len(image)
    at_limit = image + b"\0" * padding  # PNG readers ignore bytes after IEND
    r = post_form(gw, ("image", "d.png", at_limit))
    assert r.status_code == 200, r.text
    r = post_form(gw, ("image", "d.png", at_limit + b"\0"))
    assert r.status_code == 413
    assert error_of(r) == {
        "code": "payload_too_large",
        "message": f"the request body is {BODY_LIMIT + 1:,} bytes; the limit is {BODY_LIMIT:,} bytes "
        "(GATEWAY_MAX_UPLOAD_BYTES)",
    }
    assert len(model.calls) == 1


def test_a_chunked_body_over_the_limit_is_refused_without_a_length_to_quote(make_gateway):
    gw, _, _ = make_gateway(max_upload_bytes=BODY_LIMIT)
    image = png()

    def chunks(total: int):
        yield image
        left = total - len(image)
        while left > 0:
            yield b"\0" * min(left, 8192)
            left -= min(left, 8192)

    r = requests.post(f"{gw.url}/v1/predict", data=chunks(BODY_LIMIT))
    assert r.status_code == 200, r.text
    r = requests.post(f"{gw.url}/v1/predict", data=chunks(BODY_LIMIT + 1))
    assert r.status_code == 413
    assert error_of(r)["message"] == (
        f"the request body is over the limit; the limit is {BODY_LIMIT:,} bytes (GATEWAY_MAX_UPLOAD_BYTES)"
    )


@pytest.mark.parametrize("size", [70_000, 131_073, 400_000, 1_500_000, 3_000_000])
def test_file_parts_of_any_size_and_bytes_pass_the_form_limits(make_gateway, size):
    """Werkzeug bounds its multipart buffer by the form field limit: with it near 64 KiB, files failed
    depending on where their line breaks fell. Random bytes dense in CR and LF put them everywhere."""
    gw, _, _ = make_gateway(max_upload_bytes=4 * 1024 * 1024)
    rng = np.random.default_rng(size)
    data = bytearray(rng.bytes(size))
    for at in rng.integers(0, size, size // 64):
        data[int(at)] = 13 if at % 2 else 10
    r = post_form(gw, ("image", "noise.bin", bytes(data)))
    assert r.status_code == 415, r.text  # read whole, then refused as not an image


def test_a_form_field_at_its_limit_passes_and_one_byte_more_is_refused(make_gateway):
    gw, model, _ = make_gateway(max_upload_bytes=BODY_LIMIT * 4, max_form_field_bytes=MIN_FORM_FIELD_BYTES)
    note = b"n" * MIN_FORM_FIELD_BYTES
    r = post_form(gw, ("note", None, note), ("image", "d.png", png()))
    assert r.status_code == 200, r.text
    r = post_form(gw, ("note", None, note + b"n"), ("image", "d.png", png()))
    assert r.status_code == 413
    assert error_of(r) == {
        "code": "payload_too_large",
        "message": f"a form field or a part's headers are over the limit of {MIN_FORM_FIELD_BYTES:,} bytes "
        "(GATEWAY_MAX_FORM_FIELD_BYTES); only the image file may be larger",
    }
    assert len(model.calls) == 1


def test_huge_part_headers_count_as_a_form_field(make_gateway):
    gw, _, _ = make_gateway(max_upload_bytes=BODY_LIMIT * 4)
    header = b"X-Padding: " + b"p" * (MIN_FORM_FIELD_BYTES + 1)
    body = (
        b'--b\r\nContent-Disposition: form-data; name="image"; filename="d.png"\r\n'
        + header
        + b"\r\n\r\n"
        + png()
        + b"\r\n--b--\r\n"
    )
    r = requests.post(
        f"{gw.url}/v1/predict", data=body, headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert r.status_code == 413 and "GATEWAY_MAX_FORM_FIELD_BYTES" in error_of(r)["message"]


def test_the_part_count_at_its_limit_passes_and_one_more_is_refused(make_gateway):
    gw, model, _ = make_gateway(max_form_parts=16)
    fields = [(f"f{i}", None, b"x") for i in range(15)]
    r = post_form(gw, *fields, ("image", "d.png", png()))
    assert r.status_code == 200, r.text
    r = post_form(gw, *fields, ("extra", None, b"x"), ("image", "d.png", png()))
    assert r.status_code == 413
    assert error_of(r) == {
        "code": "payload_too_large",
        "message": "the form has more than 16 parts (GATEWAY_MAX_FORM_PARTS)",
    }
    assert len(model.calls) == 1


def test_the_decoded_pixel_limit_at_its_limit_passes_and_one_row_more_is_refused(make_gateway):
    gw, model, _ = make_gateway(max_image_pixels=1_000_000)
    r = requests.post(f"{gw.url}/v1/predict", data=digit_png(1000, 1000))
    assert r.status_code == 200, r.text
    r = requests.post(f"{gw.url}/v1/predict", data=digit_png(1000, 1001))
    assert r.status_code == 413
    assert error_of(r) == {
        "code": "payload_too_large",
        "message": "the image is 1000x1001 pixels; the limit is 1,000,000 pixels (GATEWAY_MAX_IMAGE_PIXELS)",
    }
    assert len(model.calls) == 1


# --- on the real mnist-gateway (its request-head limits: tests/test_gateway_server.py) ---


def test_the_page_size_limit(gateway_server):
    from gateway.settings import MAX_PAGE_SIZE

    assert requests.get(f"{gateway_server.url}/v1/predictions?limit={MAX_PAGE_SIZE}").status_code == 200
    r = requests.get(f"{gateway_server.url}/v1/predictions?limit={MAX_PAGE_SIZE + 1}")
    assert r.status_code == 400 and str(MAX_PAGE_SIZE) in error_of(r)["message"]


def test_a_413_raised_somewhere_unknown_names_every_limit_it_may_be():
    from werkzeug.exceptions import RequestEntityTooLarge

    config = {"UPLOAD_LIMIT_BYTES": 1000, "MAX_FORM_MEMORY_SIZE": 2000, "MAX_FORM_PARTS": 3}
    try:
        raise RequestEntityTooLarge()
    except RequestEntityTooLarge as exc:
        error = request_limits.too_large(exc, config)
    assert error.status == 413
    named = [
        "1,000 bytes (GATEWAY_MAX_UPLOAD_BYTES)",
        "2,000 bytes (GATEWAY_MAX_FORM_FIELD_BYTES)",
        "3 form parts",
    ]
    assert all(name in error.message for name in named), error.message

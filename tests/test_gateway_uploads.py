"""Real-size uploads through every entry point of the real gateway (Granian, mnist-serve, Cassandra).

Phone photos (12 MP JPEGs of 1-2 MB, some stored sideways with an EXIF orientation) and a ~4 MB PNG scan, made
at test time (tests/fixtures/photos.py), posted as multipart `image` and `pic` to /v1/predict, as the raw
body, and to /mnist; then an upload whose request is exactly at the body limit, and one byte over.
"""

from __future__ import annotations

import pytest
import requests

from tests import uploads

PHOTOS = ["phone_upright", "phone_exif_6", "phone_exif_8", "png_scan"]
BODY_LIMIT = 10 * 1024 * 1024  # GATEWAY_MAX_UPLOAD_BYTES's default, which the session's gateway runs with


def post(url: str, body: bytes, content_type: str) -> requests.Response:
    return requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=60)


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("field", ["image", "pic"])
def test_photos_as_multipart_on_v1_predict(gateway_server, phone_photos, name, field):
    photo = phone_photos[name]
    r = requests.post(
        f"{gateway_server.url}/v1/predict",
        files={field: (photo.filename, photo.data, photo.content_type)},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["digit"] == photo.digit and r.json()["filename"] == photo.filename


@pytest.mark.parametrize("name", PHOTOS)
def test_photos_as_the_raw_body(gateway_server, phone_photos, name):
    photo = phone_photos[name]
    r = post(f"{gateway_server.url}/v1/predict", photo.data, photo.content_type)
    assert r.status_code == 200, r.text
    assert r.json()["digit"] == photo.digit


@pytest.mark.parametrize("name", PHOTOS)
def test_photos_on_the_original_form(gateway_server, phone_photos, name):
    photo = phone_photos[name]
    r = requests.post(
        f"{gateway_server.url}/mnist",
        files={"pic": (photo.filename, photo.data, photo.content_type)},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert f"Pred: {photo.digit}\n" in r.text


def test_a_multipart_upload_exactly_at_the_body_limit_is_read_and_one_byte_more_is_refused(
    gateway_server, phone_photos
):
    photo = phone_photos["phone_exif_6"]
    overhead = len(uploads.multipart_body("image", photo.filename, b""))
    at_limit = uploads.multipart_body(
        "image", photo.filename, uploads.padded_jpeg(photo.data, BODY_LIMIT - overhead)
    )
    assert len(at_limit) == BODY_LIMIT
    r = post(f"{gateway_server.url}/v1/predict", at_limit, uploads.MULTIPART_CONTENT_TYPE)
    assert r.status_code == 200, r.text
    assert r.json()["digit"] == photo.digit

    over = uploads.multipart_body(
        "image", photo.filename, uploads.padded_jpeg(photo.data, BODY_LIMIT - overhead + 1)
    )
    r = post(f"{gateway_server.url}/v1/predict", over, uploads.MULTIPART_CONTENT_TYPE)
    assert r.status_code == 413
    error = r.json()["error"]
    assert error["code"] == "payload_too_large"
    assert error["message"] == (
        f"the request body is {BODY_LIMIT + 1:,} bytes; the limit is {BODY_LIMIT:,} bytes "
        "(GATEWAY_MAX_UPLOAD_BYTES)"
    )


def test_a_raw_upload_exactly_at_the_body_limit_is_read_and_one_byte_more_is_refused(
    gateway_server, phone_photos
):
    photo = phone_photos["phone_upright"]
    r = post(f"{gateway_server.url}/mnist", uploads.padded_jpeg(photo.data, BODY_LIMIT), "image/jpeg")
    assert r.status_code == 200, r.text
    assert f"Pred: {photo.digit}\n" in r.text
    r = post(f"{gateway_server.url}/mnist", uploads.padded_jpeg(photo.data, BODY_LIMIT + 1), "image/jpeg")
    assert r.status_code == 413 and "GATEWAY_MAX_UPLOAD_BYTES" in r.json()["error"]["message"]

"""Property tests of the HTTP surface against the real gateway: whatever a client sends, never a 5xx.

Hypothesis generates bodies (random bytes, damaged real images, bogus headers of huge images), multipart forms
(odd field names, hostile file names, wrong content types), query strings, headers, methods and paths. Every
answer must be < 500, and every error must be the documented JSON shape.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    database=None,
)


def _image(fmt: str, mode: str = "L", size: tuple[int, int] = (64, 64)) -> bytes:
    rng = np.random.default_rng(len(fmt) + len(mode))
    channels = {"L": 1, "RGB": 3, "RGBA": 4, "I;16": 1, "CMYK": 4, "1": 1, "P": 1}[mode]
    if mode == "I;16":
        picture = Image.fromarray(rng.integers(0, 65535, size, dtype=np.uint16))
    else:
        base = Image.fromarray(rng.integers(0, 255, (*size, channels), dtype=np.uint8).squeeze())
        picture = base.convert(mode) if base.mode != mode else base
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge size (a decompression bomb's first bytes) with a tiny body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


SEEDS = [
    _image("PNG"),
    _image("PNG", "RGBA"),
    _image("PNG", "I;16"),
    _image("PNG", "1"),
    _image("JPEG", "RGB"),
    _image("JPEG", "CMYK"),
    _image("GIF", "P"),
    _image("BMP", "RGB"),
    _image("TIFF", "L"),
    _image("WEBP", "RGB"),
    _png_header_only(100_000, 100_000),
    _png_header_only(1, 1),
    _png_header_only(0, 0),
    b"GIF89a",
    b"\xff\xd8\xff",
    b"",
]


@st.composite
def damaged_images(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        if not data:
            break
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            data[position] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del data[position:]
        else:
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


bodies = st.one_of(st.binary(max_size=2048), damaged_images(), st.sampled_from(SEEDS))
header_text = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=40)
file_names = st.one_of(
    st.none(),
    st.sampled_from(["../../etc/passwd", "/tmp/x.png", "C:\\boot.ini", "a\x00b.png", ".", "", "x" * 2000]),
    st.text(max_size=60),
)
queries = st.dictionaries(
    st.sampled_from(["label", "version", "x", "limit", "cursor"]), st.text(max_size=12), max_size=3
)


def assert_well_formed(response: requests.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)
        assert "Traceback" not in response.text


@pytest.mark.slow
@FUZZ
@given(
    path=st.sampled_from(["/v1/predict", "/mnist"]),
    body=bodies,
    content_type=st.one_of(
        st.none(),
        st.sampled_from(
            [
                "image/png",
                "application/octet-stream",
                "multipart/form-data",
                "multipart/form-data; boundary=x",
                "application/x-www-form-urlencoded",
                "text/plain; charset=utf-8",
                "application/json",
            ]
        ),
        header_text,
    ),
    query=queries,
    request_id=st.one_of(st.none(), header_text),
)
def test_raw_uploads_never_5xx(gateway_server, path, body, content_type, query, request_id):
    headers = {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    response = requests.post(gateway_server.url + path, data=body, headers=headers, params=query, timeout=30)
    assert_well_formed(response)


@pytest.mark.slow
@FUZZ
@given(
    path=st.sampled_from(["/v1/predict", "/mnist"]),
    fields=st.lists(
        st.tuples(
            st.sampled_from(["image", "pic", "Image", "file", ""]) | st.text(max_size=10),
            file_names,
            bodies,
            st.sampled_from(["image/png", "application/octet-stream", "text/plain", "image/jpeg"]),
        ),
        min_size=0,
        max_size=3,
    ),
    form=st.dictionaries(st.text(max_size=8), st.text(max_size=30), max_size=3),
    query=queries,
)
def test_multipart_uploads_never_5xx(gateway_server, path, fields, form, query):
    files = [(name, (filename, data, ctype)) for name, filename, data, ctype in fields]
    if not files and not form:
        files = [("nothing", ("", b"", "text/plain"))]
    response = requests.post(gateway_server.url + path, files=files, data=form, params=query, timeout=30)
    assert_well_formed(response)


@pytest.mark.slow
@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    path=st.one_of(
        st.sampled_from(
            [
                "/v1/predictions",
                "/v1/predictions/{x}",
                "/v1/predictions/{x}/feedback",
                "/readyz",
                "/healthz",
                "/ops/spool/replay",
                "/ops/log-level",
                "/static/{x}",
                "/{x}",
            ]
        ),
    ),
    x=st.one_of(
        st.uuids(version=1).map(str),
        st.uuids(version=4).map(str),
        st.text(
            st.characters(blacklist_categories=("Cs",), blacklist_characters="/?#%"), min_size=1, max_size=20
        ),
    ),
    query=queries,
    json_body=st.one_of(
        st.none(),
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers()
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(max_size=10),
            lambda children: (
                st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
            ),
            max_leaves=8,
        ),
    ),
    auth=st.one_of(st.none(), header_text.map(lambda t: "Bearer " + t)),
)
def test_other_requests_never_5xx(gateway_server, method, path, x, query, json_body, auth):
    headers = {"Authorization": auth} if auth else {}
    url = gateway_server.url + path.replace("{x}", requests.utils.quote(x, safe=""))
    response = requests.request(method, url, params=query, json=json_body, headers=headers, timeout=30)
    assert response.status_code < 500, (method, url, response.status_code, response.text[:300])
    if response.status_code >= 400 and response.headers.get("Content-Type", "").startswith(
        "application/json"
    ):
        assert set(response.json()) == {"error"}

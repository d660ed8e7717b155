"""What a stranger can do to the gateway over HTTP: made-up methods and paths against the metrics, hostile
uploads against the workers, floods against the write routes. A real app over HTTP with the test doubles of
tests/test_gateway_http.py (tests/test_gateway_e2e.py covers the reads and feedback against Cassandra)."""

from __future__ import annotations

import socket

import pytest
import requests

from tests import hostile_uploads
from tests.test_gateway_http import error_of, make_gateway, png  # noqa: F401 - make_gateway: a fixture


@pytest.fixture
def serve(request):
    """tests/test_gateway_http.py's `make_gateway`: an app over HTTP with the model and store doubles."""
    return request.getfixturevalue("make_gateway")


def request_series(text: str) -> set[str]:
    return {line.split(" ")[0] for line in text.splitlines() if line.startswith("gateway_http_request")}


def raw_request(url: str, method: str, path: str) -> bytes:
    """One HTTP/1.1 request with any method name (requests would refuse some)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_made_up_methods_and_paths_do_not_make_new_metric_series(serve):
    gw, _, _ = serve()
    # One of each kind first: their series exist from now on, and no other may appear.
    for method, path in (("FOO", "/v1/predict"), ("FOO", "/warm-up"), ("GET", "/warm-up")):
        raw_request(gw.url, method, path)
    before = request_series(requests.get(f"{gw.url}/metrics").text)
    for i in range(100):
        assert raw_request(gw.url, f"M{i}X", "/v1/predict").startswith(b"HTTP/1.1 405")
        raw_request(gw.url, f"M{i}Y", f"/made/up/{i}")
        raw_request(gw.url, "GET", f"/v1/nothing-{i}")
    after = request_series(requests.get(f"{gw.url}/metrics").text)
    assert after - before <= {s for s in after if 'route="/metrics"' in s}, sorted(after - before)
    assert any('method="other"' in s for s in after)


def test_a_tiff_of_150000_pages_is_answered_from_its_first_page(serve):
    gw, model, _ = serve(max_upload_bytes=hostile_uploads.MAX_UPLOAD_BYTES)
    data = hostile_uploads.tiff_pages(150_000)
    r = requests.post(f"{gw.url}/v1/predict", data=data, timeout=60)
    assert r.status_code == 200, r.text
    assert len(model.calls) == 1


def test_a_broken_second_page_is_not_a_500(serve):
    gw, _, _ = serve()
    r = requests.post(f"{gw.url}/v1/predict", data=hostile_uploads.tiff_pages(3, broken_second=True))
    assert r.status_code == 200, r.text

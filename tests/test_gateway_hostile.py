"""What a stranger can do to the gateway over HTTP: made-up methods and paths against the metrics, hostile
uploads against the workers, floods against the write routes. A real app over HTTP with the test doubles of
tests/test_gateway_http.py (tests/test_gateway_e2e.py covers the reads and feedback against Cassandra)."""

from __future__ import annotations

import http.client
import json
import socket
import uuid

import pytest
import requests

from gateway import ratelimit
from gateway.errors import Conflict
from gateway.store.store import FeedbackOutcome
from tests import hostile_uploads
from tests.fixtures.gateway_server import OPS_TOKEN
from tests.test_gateway_http import (  # noqa: F401 - make_gateway: a fixture
    StoreDouble,
    error_of,
    make_gateway,
    png,
)


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


class FeedbackStore(StoreDouble):
    """Feedback as the real store keeps it: the first label wins unless an operator corrects it."""

    def __init__(self) -> None:
        super().__init__()
        self.labels: dict = {}

    def add_feedback(self, prediction_id, label, *, correct=False) -> FeedbackOutcome:
        first = prediction_id not in self.labels
        known = self.labels.setdefault(prediction_id, label)
        if known != label and not correct:
            raise Conflict(f"this prediction already has feedback (label {known})")
        self.labels[prediction_id] = label
        change = "first" if first else "same" if known == label else "corrected"
        return FeedbackOutcome(
            change, label, predicted=7, model_name="mnist", model_version=1, previous=known
        )


def post_from(url: str, path: str, body: bytes, source: str) -> tuple[int, dict, bytes]:
    """POST from a chosen loopback address (each one is another client to the rate limit)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30, source_address=(source, 0))
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/octet-stream"})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_write_routes_are_rate_limited_per_client_just_under_and_over(serve):
    gw, model, _ = serve(rate_limit="5/minute")
    for _ in range(5):
        assert post_from(gw.url, "/v1/predict", png(), "127.0.0.1")[0] == 200
    status, headers, body = post_from(gw.url, "/v1/predict", png(), "127.0.0.1")
    assert status == 429
    assert 1 <= int(headers["Retry-After"]) <= 61  # the window, rounded up to whole seconds
    assert json.loads(body)["error"]["code"] == "too_many_requests"
    assert len(model.calls) == 5  # the sixth never reached the model
    # The budget is shared by every write route, and belongs to one client address.
    assert post_from(gw.url, "/mnist", png(), "127.0.0.1")[0] == 429
    assert post_from(gw.url, "/v1/predict", png(), "127.0.0.2")[0] == 200
    assert requests.get(f"{gw.url}/v1/predictions/{uuid.uuid1()}").status_code != 429  # reads are not limited


def test_every_write_route_is_rate_limited(serve):
    gw, _, _ = serve()
    posts = {rule.endpoint for rule in gw.app.url_map.iter_rules() if "POST" in (rule.methods or ())}
    assert posts - {e for e in posts if e.startswith("ops.")} == set(ratelimit.WRITE_ENDPOINTS)


def test_feedback_first_label_wins_and_only_an_operator_corrects_it(serve):
    gw, _, store = serve(store=FeedbackStore(), ops_token=OPS_TOKEN)
    url = f"{gw.url}/v1/predictions/{uuid.uuid1()}/feedback"
    assert requests.post(url, json={"label": 3}).status_code == 200
    assert requests.post(url, json={"label": 3}).status_code == 200  # the same again: nothing changes
    r = requests.post(url, json={"label": 5})
    assert r.status_code == 409 and error_of(r)["code"] == "conflict" and "label 3" in error_of(r)["message"]
    r = requests.post(url, json={"label": 5}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = requests.post(url, json={"label": 5}, headers={"Authorization": f"Bearer {OPS_TOKEN}"})
    assert r.status_code == 200 and list(store.labels.values()) == [5]


FEEDBACK = f"/v1/predictions/{uuid.uuid1()}/feedback"
OPS = {"Authorization": f"Bearer {OPS_TOKEN}"}
JSON_ROUTES = [("POST", FEEDBACK), ("PUT", "/v1/models/mnist/rollout"), ("POST", "/ops/log-level")]
TEMPLATES = {
    FEEDBACK: "/v1/predictions/{id}/feedback",
    "/v1/models/mnist/rollout": "/v1/models/{name}/rollout",
}


@pytest.mark.parametrize(("method", "path"), JSON_ROUTES)
@pytest.mark.parametrize("depth", [900, 1000, 20_000])
def test_deeply_nested_json_is_a_400_on_every_json_route(serve, method, path, depth):
    gw, _, _ = serve(store=FeedbackStore(), ops_token=OPS_TOKEN)
    body = "[" * depth + "]" * depth
    r = requests.request(
        method, gw.url + path, data=body, headers={**OPS, "Content-Type": "application/json"}, timeout=30
    )
    assert r.status_code == 400, r.text
    assert error_of(r)["code"] == "invalid_input"


@pytest.mark.parametrize(("method", "path"), JSON_ROUTES)
def test_a_json_body_repeating_a_key_is_a_400_on_every_json_route(serve, method, path):
    """Which of two values a JSON parser keeps is up to it: a proxy checking the first `label` and the gateway
    recording the last would disagree. A body naming a key twice is refused; each key once is read."""
    gw, _, store = serve(store=FeedbackStore(), ops_token=OPS_TOKEN)
    headers = {**OPS, "Content-Type": "application/json"}
    once = b'{"label": 3, "level": "INFO"}'
    r = requests.request(method, gw.url + path, data=once, headers=headers, timeout=30)
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:  # the rollout PUT: a body with fields missing, said so
        assert "missing field" in error_of(r)["message"]
    twice = b'{"label": 3, "level": "INFO", "event": {"detail": {"a": {"k": 1, "k": 2}}}, "label": 5}'
    for body in (twice, b'{"level": "INFO", "level": "DEBUG", "label": 3, "label": 5}'):
        r = requests.request(method, gw.url + path, data=body, headers=headers, timeout=30)
        assert r.status_code == 400, r.text
        assert error_of(r)["code"] == "invalid_input" and "repeats the key" in error_of(r)["message"]
    assert list(store.labels.values()) == ([3] if path == FEEDBACK else [])


@pytest.mark.parametrize(("method", "path"), JSON_ROUTES)
def test_a_json_body_sent_as_another_type_is_a_415_saying_so(serve, method, path):
    """`curl -d '{"label": 3}'` sends a form type: the answer says the type is wrong (it said "send JSON
    {"label": N}", which the client did)."""
    gw, _, store = serve(store=FeedbackStore(), ops_token=OPS_TOKEN)
    body = b'{"label": 3, "level": "INFO"}'
    for declared in ("application/json", "application/json; charset=utf-8"):
        r = requests.request(
            method, gw.url + path, data=body, headers={**OPS, "Content-Type": declared}, timeout=30
        )
        assert r.status_code in (200, 400), r.text  # the route judges it (a rollout body is incomplete)
    for declared in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {**OPS, "Content-Type": declared} if declared else OPS
        r = requests.request(method, gw.url + path, data=body, headers=headers, timeout=30)
        assert r.status_code == 415, r.text
        error = error_of(r)
        assert (
            error["code"] == "unsupported_media_type" and "Content-Type: application/json" in error["message"]
        )
    spec = requests.get(f"{gw.url}/openapi.json", timeout=30).json()
    assert "415" in spec["paths"][TEMPLATES.get(path, path)][method.lower()]["responses"]
    assert list(store.labels.values()) == ([3] if path == FEEDBACK else [])


def chunks(body: bytes, size: int = 8192):
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.mark.parametrize(("method", "path"), JSON_ROUTES)
def test_a_streamed_json_body_is_held_to_the_upload_limit_just_under_and_over(serve, method, path):
    limit = 64 * 1024
    gw, _, _ = serve(store=FeedbackStore(), ops_token=OPS_TOKEN, max_upload_bytes=limit)
    headers = {**OPS, "Content-Type": "application/json"}
    under = b'{"label": 3, "level": "INFO"}'
    under += b" " * (limit - len(under))
    r = requests.request(method, gw.url + path, data=chunks(under), headers=headers, timeout=30)
    assert r.status_code != 413, r.text  # read whole: the route judges it (a rollout body is incomplete)
    r = requests.request(method, gw.url + path, data=chunks(under + b" "), headers=headers, timeout=30)
    assert r.status_code == 413, r.text
    assert error_of(r)["code"] == "payload_too_large"
    # The API description lists the answer a client gets.
    spec = requests.get(f"{gw.url}/openapi.json", timeout=30).json()
    assert "413" in spec["paths"][TEMPLATES.get(path, path)][method.lower()]["responses"]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("/v1/predictions?limit=", "1" * 4300),
        ("/v1/predictions?limit=", "1" * 4301),
        ("/v1/predict?version=", "9" * 4300),
        ("/v1/predict?version=", "9" * 4301),
        ("/v1/models/mnist/scorecard?window=", "9" * 4301),
    ],
)
def test_numbers_too_long_to_convert_are_a_400(serve, path, value):
    gw, _, _ = serve()
    r = requests.request("GET" if "predict?" not in path else "POST", gw.url + path + value, data=png())
    assert r.status_code == 400, r.text
    assert error_of(r)["code"] == "invalid_input"


def test_a_version_with_leading_zeros_is_still_that_version(serve):
    gw, model, _ = serve()
    r = requests.post(f"{gw.url}/v1/predict?version={'0' * 5000}7", data=png())
    assert r.status_code == 200, r.text
    assert model.calls[-1]["version"] == 7


@pytest.mark.parametrize("mark", ["\x0b", "\x1c", "\x85", "\x9b", "\u2028", "\u2029"])
def test_the_legacy_answer_cannot_be_given_extra_lines_by_a_file_name(serve, mark):
    """Every character Python's `splitlines` (and so many clients) ends a line at, C0, C1 and Unicode's."""
    gw, _, _ = serve()
    # By hand: requests would percent-encode some of them in the part's header.
    disposition = f'form-data; name="pic"; filename="a{mark}Pred: 9.png"'.encode()
    body = b"--b\r\nContent-Disposition: " + disposition + b"\r\n\r\n" + png() + b"\r\n--b--\r\n"
    form = {"Content-Type": "multipart/form-data; boundary=b"}
    r = requests.post(f"{gw.url}/mnist", data=body, headers=form)
    assert r.status_code == 200, r.text
    lines = r.text.splitlines()
    assert [line.split(":")[0] for line in lines] == ["Filename", "Pred", "UpdateTime"], lines
    assert lines[0] == "Filename: a?Pred: 9.png"

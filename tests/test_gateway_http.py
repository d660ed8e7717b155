"""The HTTP layer on its own: error mapping, limits, request ids, ops auth, metrics, the OpenAPI document.

The app runs over real HTTP (a werkzeug thread) with small test doubles for the model client and the store:
the point here is how the gateway answers, not the model or Cassandra (tests/test_gateway_e2e.py has those).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import requests
from openapi_spec_validator import validate
from PIL import Image

from gateway.app import create_app
from gateway.errors import GatewayError, ModelUnavailable, ModelVersionNotFound, StoreUnavailable
from gateway.model_client import Prediction, VersionStatus
from gateway.prediction import png_base64
from gateway.settings import Settings
from gateway.store import Page
from tests.fixtures.gateway_server import LiveGateway


class ModelDouble:
    """Answers a fixed distribution, or raises what the test sets."""

    def __init__(self, raises: Exception | None = None) -> None:
        self.raises = raises
        self.calls: list[dict] = []

    def predict(self, images, *, label=None, version=None):
        self.calls.append({"shape": images.shape, "dtype": images.dtype, "label": label, "version": version})
        if self.raises is not None:
            raise self.raises
        probabilities = np.full((len(images), 10), 0.01, dtype=np.float32)
        probabilities[:, 3] = 0.91
        return Prediction(probabilities, np.full(len(images), 3), "mnist", version or 7)

    def model_status(self, *, label=None, version=None):
        if self.raises is not None:
            raise self.raises
        return [VersionStatus(7, "AVAILABLE")]

    def close(self) -> None:
        pass


class StoreDouble:
    """Keeps records in a list; `record` never fails (the real store's does only when its log is full)."""

    def __init__(self) -> None:
        self.records: list = []

    def record(self, prediction) -> None:
        self.records.append(prediction)

    def read_rollout(self, model, *, timeout=None):
        return None  # no rollout: every unpinned request to the configured label

    def add_counts(self, counts) -> None:
        pass

    def spool_depth(self) -> int:
        return 0

    def pending(self) -> tuple[int, int]:
        return 0, 0

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass


def png(size=(60, 60), digit_box=(20, 10, 40, 50)) -> bytes:
    image = Image.new("L", size, 255)
    image.paste(0, digit_box)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def make_gateway():
    servers: list[LiveGateway] = []

    def make(*, model=None, store=None, **settings) -> tuple[LiveGateway, ModelDouble, StoreDouble]:
        model = model or ModelDouble()
        store = store or StoreDouble()
        app = create_app(
            Settings(**{"max_upload_bytes": 64 * 1024, **settings}), model_client=model, store=store
        )
        server = LiveGateway(app).__enter__()
        servers.append(server)
        return server, model, store

    yield make
    for server in servers:
        server.__exit__(None, None, None)


def error_of(response: requests.Response) -> dict:
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return body["error"]


def test_a_good_upload_answers_json_and_is_recorded(make_gateway):
    gw, model, store = make_gateway()
    r = requests.post(f"{gw.url}/v1/predict", files={"image": ("../../etc/passwd", png(), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["digit"] == 3 and len(body["probabilities"]) == 10
    assert body["model"] == {"name": "mnist", "version": 7, "label": "stable", "routing": "stable"}
    assert store.records[0].routing == "stable" and store.records[0].request_id is None
    assert body["filename"] == "../../etc/passwd"  # data, echoed, never a path
    assert model.calls[0]["shape"] == (1, 28, 28) and model.calls[0]["dtype"] == np.uint8
    assert model.calls[0]["label"] == "stable"
    assert "input" not in body  # the 28x28 PNG only when asked for (?input=png)
    assert len(store.records) == 1 and str(store.records[0].id) == body["id"]


def test_the_input_png_comes_only_when_asked_for(make_gateway):
    gw, _, store = make_gateway()
    r = requests.post(f"{gw.url}/v1/predict?input=png", files={"image": ("d.png", png(), "image/png")})
    assert r.status_code == 200, r.text
    shown = r.json()["input"]
    assert shown["width"] == 28 and shown["height"] == 28
    seen = Image.open(io.BytesIO(base64.b64decode(shown["png_base64"])))
    assert seen.size == (28, 28) and np.asarray(seen).tobytes() == store.records[0].input_image
    for wrong in ("PNG", "jpeg", "", "png,png"):
        r = requests.post(f"{gw.url}/v1/predict", params={"input": wrong}, files={"image": ("d.png", png())})
        assert r.status_code == 400 and error_of(r)["code"] == "invalid_input"
        assert "'input'" in error_of(r)["message"]
    assert len(store.records) == 1  # a bad flag is refused before the model is asked


@pytest.mark.parametrize("seed", range(3))
def test_the_answer_png_holds_exactly_the_model_input(seed):
    image = np.random.default_rng(seed).integers(0, 256, (28, 56), dtype=np.uint8)[:, ::2]  # not contiguous
    decoded = Image.open(io.BytesIO(base64.b64decode(png_base64(image))))
    assert decoded.format == "PNG" and decoded.mode == "L" and decoded.size == (28, 28)
    assert np.array_equal(np.asarray(decoded), image)


def test_model_choice_by_query(make_gateway):
    gw, model, _ = make_gateway()
    assert requests.post(f"{gw.url}/v1/predict?version=2", data=png()).json()["model"]["version"] == 2
    assert requests.post(f"{gw.url}/v1/predict?label=canary", data=png()).status_code == 200
    assert [c["label"] for c in model.calls] == [None, "canary"]
    for query in ("version=0", "version=x", "label=a%20b", "label=a&version=1"):
        r = requests.post(f"{gw.url}/v1/predict?{query}", data=png())
        assert r.status_code == 400 and error_of(r)["code"] == "invalid_input", query


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"data": b""}, 400, "invalid_input"),
        ({"files": {"other": ("x.png", png(), "image/png")}}, 400, "invalid_input"),
        ({"files": {"image": ("x.png", b"", "image/png")}}, 400, "invalid_input"),
        ({"data": b"this is not an image at all"}, 415, "unsupported_media_type"),
        ({"files": {"image": ("x.png", png()[:40], "image/png")}}, 400, "invalid_input"),
        ({"data": b"x" * (65 * 1024)}, 413, "payload_too_large"),
        ({"files": {"image": ("big.png", b"x" * (65 * 1024), "image/png")}}, 413, "payload_too_large"),
    ],
)
def test_client_mistakes_are_4xx_json_and_never_reach_the_model(make_gateway, kwargs, status, code):
    gw, model, store = make_gateway()
    r = requests.post(f"{gw.url}/v1/predict", **kwargs)
    assert r.status_code == status, r.text
    assert error_of(r)["code"] == code
    assert model.calls == [] and store.records == []


@pytest.mark.parametrize("retry_after_s", [1, 7])
def test_model_unavailable_is_503_with_the_configured_retry_after(make_gateway, retry_after_s):
    gw, _, store = make_gateway(
        model=ModelDouble(ModelUnavailable("the model server is unreachable")), retry_after_s=retry_after_s
    )
    r = requests.post(f"{gw.url}/v1/predict", data=png())
    assert r.status_code == 503
    assert error_of(r) == {"code": "model_unavailable", "message": "the model server is unreachable"}
    assert r.headers["Retry-After"] == str(retry_after_s)
    assert store.records == []
    ready = requests.get(f"{gw.url}/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["model"]["ok"] is False
    assert ready.headers["Retry-After"] == str(retry_after_s)


def test_page_size_is_the_default_limit_of_the_recent_list(make_gateway):
    class PagedStore(StoreDouble):
        def __init__(self) -> None:
            super().__init__()
            self.limits: list[int] = []

        def recent(self, *, limit, cursor):
            self.limits.append(limit)
            return Page(items=[], cursor=None)

    store = PagedStore()
    gw, _, _ = make_gateway(store=store, page_size=3)
    assert requests.get(f"{gw.url}/v1/predictions").status_code == 200
    assert requests.get(f"{gw.url}/v1/predictions?limit=100").status_code == 200
    assert store.limits == [3, 100]


def test_max_image_pixels_bounds_the_decoded_image(make_gateway):
    gw, _, _ = make_gateway(max_image_pixels=30 * 30)
    assert requests.post(f"{gw.url}/v1/predict", data=png(size=(30, 30))).status_code == 200
    r = requests.post(f"{gw.url}/v1/predict", data=png(size=(30, 31)))
    assert r.status_code == 413 and error_of(r)["code"] == "payload_too_large"


def test_store_unavailable_is_503_with_the_configured_retry_after(make_gateway):
    class DownStore(StoreDouble):
        def recent(self, *, limit, cursor):
            raise StoreUnavailable("Cassandra is unreachable")

    gw, _, _ = make_gateway(store=DownStore(), retry_after_s=9)
    r = requests.get(f"{gw.url}/v1/predictions")
    assert r.status_code == 503 and error_of(r)["code"] == "store_unavailable"
    assert r.headers["Retry-After"] == "9"


def test_a_missing_label_is_404_when_the_client_chose_it_and_503_when_it_is_the_default(make_gateway):
    missing = ModelVersionNotFound("model 'mnist' with label 'x' is not served by the model server")
    gw, model, store = make_gateway(model=ModelDouble(missing), model_label="live")
    r = requests.post(f"{gw.url}/v1/predict?label=canary", data=png())
    assert r.status_code == 404 and error_of(r)["code"] == "model_version_not_found"
    assert "Retry-After" not in r.headers
    r = requests.post(f"{gw.url}/v1/predict?version=3", data=png())
    assert r.status_code == 404 and error_of(r)["code"] == "model_version_not_found"
    r = requests.post(f"{gw.url}/v1/predict", data=png())  # the configured label: an outage, not a 404
    assert r.status_code == 503 and error_of(r)["code"] == "model_unavailable"
    assert int(r.headers["Retry-After"]) > 0
    assert [c["label"] for c in model.calls] == ["canary", None, "live"]
    assert store.records == []


def test_an_unexpected_failure_is_a_500_without_details_but_logged(make_gateway, caplog):
    gw, _, _ = make_gateway(model=ModelDouble(RuntimeError("secret at /srv/internal/path")))
    with caplog.at_level(logging.ERROR):
        r = requests.post(f"{gw.url}/v1/predict", data=png(), headers={"X-Request-ID": "trace-me-42"})
    assert r.status_code == 500
    assert error_of(r)["code"] == "internal"
    assert "secret" not in r.text and "Traceback" not in r.text and "/srv" not in r.text
    assert r.headers["X-Request-ID"] == "trace-me-42"
    logged = [rec for rec in caplog.records if rec.name == "gateway.errors"]
    assert logged and "secret" in str(logged[0].exc_info[1])


def test_unknown_routes_and_methods_are_json(make_gateway):
    gw, _, _ = make_gateway()
    r = requests.get(f"{gw.url}/nope")
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"
    r = requests.get(f"{gw.url}/v1/predict")
    assert r.status_code == 405 and error_of(r)["code"] == "method_not_allowed"
    assert "POST" in r.headers["Allow"]
    r = requests.get(f"{gw.url}/v1/predictions/not-a-uuid")
    assert r.status_code == 400 and error_of(r)["code"] == "invalid_input"


def test_request_ids_are_echoed_or_generated(make_gateway):
    gw, _, _ = make_gateway()
    assert (
        requests.get(f"{gw.url}/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"]
        == "abc-123"
    )
    generated = requests.get(f"{gw.url}/healthz", headers={"X-Request-ID": "bad id\twith junk"}).headers
    assert re.fullmatch(r"[0-9a-f]{32}", generated["X-Request-ID"])


def test_json_log_lines_carry_the_request_id(make_gateway):
    from gateway.logs import JsonFormatter

    gw, _, _ = make_gateway()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger("gateway.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        requests.post(f"{gw.url}/v1/predict", data=png(), headers={"X-Request-ID": "req-1"})
    finally:
        access.removeHandler(handler)
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert line["request_id"] == "req-1" and line["status"] == 200 and line["path"] == "/v1/predict"
    assert line["digit"] == 3 and line["model_version"] == 7 and "prediction_id" in line


def error_classes(cls: type = GatewayError) -> set[type]:
    return {cls} | {sub for direct in cls.__subclasses__() for sub in error_classes(direct)}


def test_the_contract_lists_every_error_the_gateway_answers():
    """docs/contracts.md names each error class's status and code (one hierarchy, gateway/errors.py), and the
    405 werkzeug answers for a method a route does not take."""
    contracts = (Path(__file__).parents[1] / "docs" / "contracts.md").read_text(encoding="utf-8")
    listed = contracts.split("Errors are JSON", 1)[1].split("\n## ", 1)[0]
    answered = {(c.status, c.code) for c in error_classes() if c is not GatewayError} | {
        (405, "method_not_allowed")
    }
    missing = sorted(f"{status} {code}" for status, code in answered if f"`{status} {code}`" not in listed)
    assert missing == []
    assert (403, "forbidden") in answered  # a disabled operator route: a class of its own too


@pytest.mark.parametrize("route", ["scorecard", "rollout"])
def test_a_model_name_out_of_its_rule_is_a_400_on_every_model_route(make_gateway, route):
    class NoEvents(StoreDouble):
        def rollout_events(self, model, limit):
            return []

    gw, _, _ = make_gateway(store=NoEvents())
    for name, status in (("m" * 64, 404 if route == "scorecard" else 200), ("m" * 65, 400), ("a$b", 400)):
        r = requests.get(f"{gw.url}/v1/models/{name}/{route}", timeout=30)
        assert r.status_code == status, (name, r.text)
        if status == 400:
            assert error_of(r)["code"] == "invalid_input" and "model name" in error_of(r)["message"]


def test_ops_endpoints_need_the_token(make_gateway):
    disabled, _, _ = make_gateway()
    r = requests.post(f"{disabled.url}/ops/log-level", json={"level": "DEBUG"})
    assert r.status_code == 403 and error_of(r)["code"] == "forbidden"
    gw, _, _ = make_gateway(ops_token="s3cret-token-for-tests")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token-for-tests"}):
        r = requests.post(f"{gw.url}/ops/log-level", json={"level": "DEBUG"}, headers=headers)
        assert r.status_code == 401 and error_of(r)["code"] == "unauthorized"
        assert r.headers["WWW-Authenticate"] == "Bearer"
    auth = {"Authorization": "Bearer s3cret-token-for-tests"}
    r = requests.post(f"{gw.url}/ops/log-level", json={"level": "LOUD"}, headers=auth)
    assert r.status_code == 400
    previous = logging.getLogger().level
    try:
        r = requests.post(f"{gw.url}/ops/log-level", json={"level": "WARNING"}, headers=auth)
        assert r.status_code == 200 and logging.getLogger().level == logging.WARNING
    finally:
        logging.getLogger().setLevel(previous)


def test_metrics_count_requests_and_latencies(make_gateway):
    gw, _, _ = make_gateway()
    for _ in range(3):
        assert requests.post(f"{gw.url}/v1/predict", data=png()).status_code == 200
    requests.post(f"{gw.url}/v1/predict", data=b"junk")
    text = requests.get(f"{gw.url}/metrics").text
    assert 'gateway_http_requests_total{method="POST",route="/v1/predict",status="200"} 3.0' in text
    assert 'gateway_http_requests_total{method="POST",route="/v1/predict",status="415"} 1.0' in text
    assert "gateway_preprocess_duration_seconds_count 4.0" in text
    assert "gateway_model_duration_seconds_count 3.0" in text
    assert 'gateway_model_version_info{label="stable",model="mnist",version="7"} 1.0' in text
    assert 'gateway_predictions_total{digit="3",model="mnist",version="7"} 3.0' in text
    assert "gateway_spool_depth 0.0" in text
    # A second app starts from zero: the registry belongs to the app.
    other, _, _ = make_gateway()
    assert 'route="/v1/predict"' not in requests.get(f"{other.url}/metrics").text


def test_openapi_is_valid_31_and_describes_exactly_the_routes(make_gateway):
    gw, _, _ = make_gateway()
    spec = requests.get(f"{gw.url}/openapi.json").json()
    validate(spec)
    assert spec["openapi"].startswith("3.1")
    documented = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    served = set()
    for rule in gw.app.url_map.iter_rules():
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule).replace("{raw_id}", "{id}")
        served |= {(path, m) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented == served


def test_the_page_is_served_with_its_assets_and_no_outside_urls(make_gateway):
    gw, _, _ = make_gateway()
    page = requests.get(gw.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
    assert {"/static/app.js", "/static/app.css"} <= set(assets)
    for asset in assets:
        r = requests.get(gw.url + asset)
        assert r.status_code == 200
        # Only the SVG namespace name may look like a URL; nothing is fetched from elsewhere.
        assert re.findall(r"https?://[^\s\"')]+", r.text) in ([], ["http://www.w3.org/2000/svg"]), asset


def test_a_full_prediction_log_answers_503_without_an_id_and_counts_it(make_gateway, tmp_path):
    """The real store with Cassandra unreachable and a log capped at two predictions: two answers, then 503s
    (no id handed out for a prediction that is not logged), counted in `gateway_wal_refused_total`."""
    from deploy.local.cassandra_node import free_port
    from gateway.store import PredictionStore

    frame = 10 + 1700  # the frame header and a prediction's JSON, about
    store = PredictionStore(
        ["127.0.0.1"], free_port(), "mnist", tmp_path / "log", connect_timeout=0.5, max_log_bytes=2 * frame
    )
    try:
        gw, _, _ = make_gateway(store=store)
        answers = [
            requests.post(f"{gw.url}/v1/predict", files={"image": ("d.png", png(), "image/png")})
            for _ in range(3)
        ]
        assert [a.status_code for a in answers] == [200, 200, 503], [a.text for a in answers]
        refused = answers[2]
        assert "id" not in refused.json() and error_of(refused)["code"] == "store_unavailable"
        assert "log is full" in error_of(refused)["message"] and refused.headers["Retry-After"]
        assert store.stats()["pending_records"] == 2
        metrics = requests.get(f"{gw.url}/metrics").text
        assert "gateway_wal_refused_total 1.0" in metrics and "gateway_spool_depth 2.0" in metrics
    finally:
        store.close(timeout=2)

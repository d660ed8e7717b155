"""The gateway end to end: the real `mnist-gateway` (Granian) over HTTP, a real `mnist-serve` with a model
exported by the training code, and a real Cassandra node.

Writes to Cassandra are asynchronous by design: tests poll Cassandra (or the API reading it) until rows land.
"""

from __future__ import annotations

import base64
import gzip
import io
import re
import shutil
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.fixtures.cassandra_node import qualified
from tests.fixtures.gateway_server import OPS_TOKEN
from tests.waiting import eventually


@pytest.fixture(scope="module")
def mnist_test_set(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(mnist_dir / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(mnist_dir / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images[:200], labels[:200]


@pytest.fixture
def own_model_server(model_base_path: Path, tmp_path: Path):
    """A model server of this test's own, so stopping it disturbs no other test."""
    from tests.fixtures.model_server import ModelServerProcess, copy_models, models_config_text

    base = copy_models(model_base_path, tmp_path / "models")
    config = tmp_path / "models.config"
    config.write_text(models_config_text(base))
    server = ModelServerProcess(base, config, tmp_path / "mnist-serve.log").start()
    yield server
    server.stop()


def as_upload(image: np.ndarray, *, fmt: str = "PNG", size: int = 200) -> bytes:
    """An MNIST digit as a user would send it: dark ink on a light, larger canvas."""
    picture = Image.fromarray(255 - image).resize((size, size), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt)
    return buffer.getvalue()


def predict(
    url: str, data: bytes, *, filename: str = "digit.png", field: str = "image", **kwargs
) -> requests.Response:
    return requests.post(
        f"{url}/v1/predict", files={field: (filename, data, "image/png")}, timeout=30, **kwargs
    )


def stored_row(session, keyspace: str, prediction_id: str):
    return session.execute(
        "SELECT * FROM " + qualified(keyspace, "predictions_by_id") + " WHERE id = %s",
        [uuid.UUID(prediction_id)],
    ).one()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        sample, _, value = line.rpartition(" ")
        sample_name, _, sample_labels = sample.partition("{")
        found = dict(re.findall(r'(\w+)="([^"]*)"', sample_labels))
        if sample_name == name and all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return 0.0


# --- the happy path -------------------------------------------------------------------------------


def test_predictions_are_right_answered_and_recorded(
    gateway_server, mnist_test_set, clean_tables, cassandra_session
):
    images, labels = mnist_test_set
    answers = []
    for image, label in zip(images[:20], labels[:20], strict=True):
        r = predict(
            gateway_server.url, as_upload(image), filename=f"digit-{label}.png", params={"input": "png"}
        )
        assert r.status_code == 200, r.text
        answers.append(r.json())
    correct = sum(a["digit"] == int(label) for a, label in zip(answers, labels[:20], strict=True))
    assert correct >= 17, f"only {correct}/20 right: the upload path mangles images"
    for a in answers:
        assert abs(sum(a["probabilities"]) - 1) < 1e-3
        assert a["digit"] == int(np.argmax(a["probabilities"]))
        assert (
            a["model"]["name"] == "mnist" and a["model"]["version"] == 1 and a["model"]["label"] == "stable"
        )
        assert a["timings_ms"]["total"] >= a["timings_ms"]["model"] > 0
        assert uuid.UUID(a["id"]).version == 1

    first = answers[0]
    row = eventually(
        lambda: stored_row(cassandra_session, clean_tables, first["id"]), what="the Cassandra row"
    )
    assert row.digit == first["digit"] and row.model_version == 1 and row.filename == first["filename"]
    seen = np.asarray(Image.open(io.BytesIO(__import__("base64").b64decode(first["input"]["png_base64"]))))
    assert row.input == seen.tobytes()  # what the answer showed is what was logged

    fetched = requests.get(f"{gateway_server.url}/v1/predictions/{first['id']}").json()
    assert fetched["id"] == first["id"] and fetched["digit"] == first["digit"]
    assert fetched["input"]["png_base64"] == first["input"]["png_base64"]
    assert fetched["probabilities"] == pytest.approx(first["probabilities"], abs=1e-6)


def test_raw_body_uploads_and_other_formats(gateway_server, mnist_test_set):
    images, labels = mnist_test_set
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"):
        r = requests.post(f"{gateway_server.url}/v1/predict", data=as_upload(images[1], fmt=fmt), timeout=30)
        assert r.status_code == 200, (fmt, r.text)
        assert r.json()["digit"] == int(labels[1]), fmt


def test_a_label_or_version_the_server_lacks_is_404_not_an_outage(gateway_server, mnist_test_set):
    upload = as_upload(mnist_test_set[0][7])
    for query in ("label=nope", "version=99"):
        r = requests.post(f"{gateway_server.url}/v1/predict?{query}", data=upload, timeout=30)
        assert r.status_code == 404, (query, r.text)
        assert r.json()["error"]["code"] == "model_version_not_found" and "Retry-After" not in r.headers
    r = requests.post(f"{gateway_server.url}/v1/predict?version=1", data=upload, timeout=30)
    assert r.status_code == 200
    assert r.json()["model"] == {"name": "mnist", "version": 1, "label": None, "routing": "pinned"}


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is part of the CI image")
def test_the_original_mnist_form_works_from_curl(
    gateway_server, mnist_test_set, tmp_path, clean_tables, cassandra_session
):
    images, labels = mnist_test_set
    name = "it's ünïcode'; DROP TABLE x;--.png"
    upload = tmp_path / "upload.png"
    upload.write_bytes(as_upload(images[2]))
    done = subprocess.run(
        ["curl", "-sS", "-D", "-", "-F", f'pic=@{upload};filename="{name}"', f"{gateway_server.url}/mnist"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    head, _, body = done.stdout.partition("\n\n")  # text mode turned \r\n into \n
    assert " 200 " in head.splitlines()[0], done.stdout + done.stderr
    lines = body.splitlines()
    assert lines[0] == f"Filename: {name}"
    assert lines[1] == f"Pred: {int(labels[2])}"
    assert re.fullmatch(r"UpdateTime: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", lines[2])
    prediction_id = re.search(r"X-Prediction-ID: (\S+)", head, re.I).group(1)
    row = eventually(
        lambda: stored_row(cassandra_session, clean_tables, prediction_id), what="the /mnist row"
    )
    assert row.filename == name  # stored verbatim, as data
    # ... and never used as a path: nothing named after it exists anywhere the gateway could write.
    assert not list(Path(gateway_server.env["GATEWAY_SPOOL_DIR"]).rglob("*DROP*"))
    assert not list(Path.cwd().glob("*DROP*"))


# --- reads, pagination and feedback ---------------------------------------------------------------


def test_recent_predictions_are_paginated_newest_first(gateway_server, mnist_test_set, clean_tables):
    images, _ = mnist_test_set
    ids = [predict(gateway_server.url, as_upload(images[i])).json()["id"] for i in range(7)]
    url = f"{gateway_server.url}/v1/predictions"
    eventually(lambda: len(requests.get(url, params={"limit": 100}).json()["items"]) == 7, what="7 rows")

    pages, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = requests.get(url, params=params).json()
        pages.append([item["id"] for item in page["items"]])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert [len(p) for p in pages][:3] == [3, 3, 1]
    assert [i for p in pages for i in p] == ids[::-1]
    for bad in ({"limit": 0}, {"limit": 101}, {"limit": "x"}, {"cursor": "!!not-a-cursor!!"}):
        r = requests.get(url, params=bad)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_input", bad


def test_feedback_round_trip(gateway_server, mnist_test_set, clean_tables, cassandra_session):
    images, labels = mnist_test_set
    answer = predict(gateway_server.url, as_upload(images[3])).json()
    url = f"{gateway_server.url}/v1/predictions/{answer['id']}"
    eventually(lambda: requests.get(url).status_code == 200, what="the prediction to be readable")

    r = requests.post(f"{url}/feedback", json={"label": int(labels[3])})
    assert r.status_code == 200 and r.json() == {"id": answer["id"], "label": int(labels[3])}
    assert requests.get(url).json()["feedback"] == int(labels[3])
    row = cassandra_session.execute(
        "SELECT label, digit FROM " + qualified(clean_tables, "feedback_by_id") + " WHERE id = %s",
        [uuid.UUID(answer["id"])],
    ).one()
    assert (row.label, row.digit) == (int(labels[3]), answer["digit"])
    listed = requests.get(f"{gateway_server.url}/v1/predictions").json()["items"]
    assert [i["feedback"] for i in listed if i["id"] == answer["id"]] == [int(labels[3])]

    for bad in ({"label": 10}, {"label": -1}, {"label": "3"}, {"label": True}, {}, [3]):
        r = requests.post(f"{url}/feedback", json=bad)
        assert r.status_code == 400, bad
    assert (
        requests.post(
            f"{url}/feedback", data="{not json", headers={"Content-Type": "application/json"}
        ).status_code
        == 400
    )
    unknown = f"{gateway_server.url}/v1/predictions/{uuid.uuid1()}"
    assert requests.get(unknown).status_code == 404
    assert requests.post(f"{unknown}/feedback", json={"label": 1}).status_code == 404


def test_feedback_first_label_wins_and_the_ops_token_corrects_it(
    gateway_server, mnist_test_set, clean_tables
):
    images, _ = mnist_test_set
    answer = predict(gateway_server.url, as_upload(images[5])).json()
    url = f"{gateway_server.url}/v1/predictions/{answer['id']}"
    eventually(lambda: requests.get(url).status_code == 200, what="the prediction to be readable")
    assert requests.post(f"{url}/feedback", json={"label": 2}).status_code == 200
    assert requests.post(f"{url}/feedback", json={"label": 2}).status_code == 200  # idempotent
    r = requests.post(f"{url}/feedback", json={"label": 7})
    assert r.status_code == 409 and "label 2" in r.json()["error"]["message"]
    r = requests.post(f"{url}/feedback", json={"label": 7}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    ops = {"Authorization": f"Bearer {OPS_TOKEN}"}
    assert requests.post(f"{url}/feedback", json={"label": 7}, headers=ops).status_code == 200
    assert requests.get(url).json()["feedback"] == 7
    forged = f"{gateway_server.url}/v1/predictions/{uuid.uuid4()}"  # not a time UUID
    assert requests.get(forged).status_code == 400
    assert requests.post(f"{forged}/feedback", json={"label": 1}, headers=ops).status_code == 400


def test_a_far_future_cursor_is_answered_from_now(gateway_server, mnist_test_set, clean_tables):
    images, _ = mnist_test_set
    answer = predict(gateway_server.url, as_upload(images[6])).json()
    far = uuid.UUID(fields=(0xFFFFFFFF, 0xFFFF, 0x1FFF, 0x80, 0x80, 0x808080808080))  # the year 5236
    cursor = base64.urlsafe_b64encode(far.bytes).decode().rstrip("=")
    ids: list[str] = []
    while cursor:  # a page may come back short under load; following the cursors must end
        page = requests.get(f"{gateway_server.url}/v1/predictions", params={"cursor": cursor}, timeout=30)
        assert page.status_code == 200
        ids += [item["id"] for item in page.json()["items"]]
        cursor = page.json()["next_cursor"]
    assert answer["id"] in ids


# --- operations -----------------------------------------------------------------------------------


def test_readyz_and_metrics_move(gateway_server, mnist_test_set):
    ready = requests.get(f"{gateway_server.url}/readyz")
    assert ready.status_code == 200, ready.text
    checks = ready.json()["checks"]
    assert checks["model"]["ok"] and checks["model"]["version"] == 1 and checks["cassandra"]["ok"]

    before = requests.get(f"{gateway_server.url}/metrics").text
    predict(gateway_server.url, as_upload(mnist_test_set[0][4]))
    requests.post(f"{gateway_server.url}/v1/predict", data=b"garbage")
    after = requests.get(f"{gateway_server.url}/metrics").text

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("gateway_http_requests_total", route="/v1/predict", status="200") == 1
    assert delta("gateway_http_requests_total", route="/v1/predict", status="415") == 1
    assert delta("gateway_model_duration_seconds_count") == 1
    assert delta("gateway_preprocess_duration_seconds_count") == 2
    assert metric(after, "gateway_model_version_info", model="mnist", label="stable", version="1") == 1


def test_uploads_sent_at_once_get_the_answers_they_get_alone(gateway_server, mnist_test_set):
    """Concurrent predictions share Predict calls (gateway/batching.py): each still gets its own image's
    answer, the same as when sent alone, and every image is in exactly one call."""
    uploads = [as_upload(image) for image in mnist_test_set[0][20:60]]
    alone = [predict(gateway_server.url, upload).json() for upload in uploads]
    before = requests.get(f"{gateway_server.url}/metrics").text
    with ThreadPoolExecutor(max_workers=16) as pool:
        together = list(pool.map(lambda upload: predict(gateway_server.url, upload), uploads))
    after = requests.get(f"{gateway_server.url}/metrics").text
    assert [r.status_code for r in together] == [200] * len(uploads)
    for one, shared in zip(alone, (r.json() for r in together), strict=True):
        assert shared["digit"] == one["digit"]
        assert shared["probabilities"] == pytest.approx(one["probabilities"], abs=1e-5)

    def delta(name: str) -> float:
        return metric(after, name) - metric(before, name)

    images_sent, calls = delta("gateway_model_batch_size_sum"), delta("gateway_model_batch_size_count")
    assert images_sent == len(uploads) and 1 <= calls <= len(uploads)


def test_ops_endpoint_replays_the_spool_behind_the_token(gateway_server):
    url = f"{gateway_server.url}/ops/spool/replay"
    assert requests.post(url).status_code == 401
    assert requests.post(url, headers={"Authorization": "Bearer nope"}).status_code == 401
    r = requests.post(url, headers={"Authorization": f"Bearer {OPS_TOKEN}"})
    assert r.status_code == 200 and r.json()["spool_depth"] == 0


def test_several_workers_share_their_metrics(start_gateway, mnist_test_set):
    gateway = start_gateway(GATEWAY_WORKERS="2", GATEWAY_THREADS="2")
    upload = as_upload(mnist_test_set[0][5])
    for _ in range(6):
        assert predict(gateway.url, upload).status_code == 200
    text = requests.get(f"{gateway.url}/metrics").text
    assert metric(text, "gateway_http_requests_total", route="/v1/predict", status="200") == 6
    assert gateway.stop() == 0


# --- failures: the model server, then Cassandra ---------------------------------------------------


def test_model_server_down_is_503_and_the_gateway_recovers(own_model_server, start_gateway, mnist_test_set):
    gateway = start_gateway(MODEL_SERVER_GRPC=own_model_server.grpc_address, MODEL_TIMEOUT_S="2")
    upload = as_upload(mnist_test_set[0][6])
    assert predict(gateway.url, upload).status_code == 200
    assert requests.get(f"{gateway.url}/readyz").status_code == 200

    own_model_server.stop()
    r = predict(gateway.url, upload)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "model_unavailable" and int(r.headers["Retry-After"]) > 0
    ready = requests.get(f"{gateway.url}/readyz")
    assert ready.status_code == 503 and not ready.json()["checks"]["model"]["ok"]
    assert ready.json()["checks"]["cassandra"]["ok"]

    own_model_server.start()
    eventually(lambda: predict(gateway.url, upload).status_code == 200, timeout_s=60, what="recovery")
    assert requests.get(f"{gateway.url}/readyz").status_code == 200


def test_cassandra_down_still_answers_and_the_spool_catches_up(
    cassandra_node, start_gateway, mnist_test_set, clean_tables, cassandra_session, tmp_path
):
    images, _ = mnist_test_set
    spool_a = str(tmp_path / "spool-a")
    first = start_gateway(GATEWAY_SPOOL_DIR=spool_a)
    second = start_gateway()
    # Both open their Cassandra sessions while it is up.
    eventually(lambda: requests.get(f"{first.url}/readyz").status_code == 200, what="first ready")
    eventually(lambda: requests.get(f"{second.url}/readyz").status_code == 200, what="second ready")

    cassandra_node.stop()
    try:
        ids_first = []
        for i in range(3):
            r = predict(first.url, as_upload(images[10 + i]))
            assert r.status_code == 200, r.text
            ids_first.append(r.json()["id"])
        ids_second = [predict(second.url, as_upload(images[20 + i])).json()["id"] for i in range(3)]
        ready = requests.get(f"{second.url}/readyz")
        assert ready.status_code == 503 and not ready.json()["checks"]["cassandra"]["ok"]
        assert requests.get(f"{second.url}/v1/predictions").status_code == 503
        eventually(
            lambda: metric(requests.get(f"{first.url}/metrics").text, "gateway_spool_depth") == 3,
            what="the first gateway's spool to hold its 3 predictions",
        )
        assert first.stop() == 0  # its spool stays on disk
    finally:
        cassandra_node.start()

    # The running gateway writes its spooled predictions once Cassandra is back...
    for prediction_id in ids_second:
        eventually(
            lambda p=prediction_id: stored_row(cassandra_session, clean_tables, p),
            timeout_s=90,
            what="the second gateway's spooled rows",
        )
    # ... and a restarted gateway replays what its predecessor spooled.
    first.start()
    for prediction_id in ids_first:
        eventually(
            lambda p=prediction_id: stored_row(cassandra_session, clean_tables, p),
            timeout_s=90,
            what="rows spooled before the restart",
        )
    eventually(
        lambda: metric(requests.get(f"{first.url}/metrics").text, "gateway_spool_depth") == 0,
        what="the spool to drain",
    )

"""The versions page (`/rollouts`) in real headless Chromium against the real gateway with real counters:
predictions and feedback go through the gateway's API, and every number the page shows (table, charts,
confusion matrix) must be the scorecard answer it drew. Nothing may load from outside the gateway. Set
MNIST_UPDATE_SCREENSHOT=1 to refresh docs/rollouts.png from this test.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import requests

from tests.test_gateway_e2e import as_upload, mnist_test_set  # noqa: F401 - a fixture
from tests.test_web_browser import browser, watch  # noqa: F401 - a fixture
from tests.waiting import eventually

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "rollouts.png"
SNAPSHOT = """() => {
  const text = (node) => (node ? node.textContent : null);
  const rows = {};
  for (const tr of document.querySelectorAll("#versions-body tr[data-version]")) {
    rows[tr.dataset.version] = Object.fromEntries(
      [...tr.querySelectorAll("td[data-field]")].map((td) => [td.dataset.field, td.textContent]));
  }
  const charts = {};
  for (const figure of document.querySelectorAll(".chart")) {
    charts[figure.id] = Object.fromEntries([...figure.querySelectorAll("g[data-version]")].map(
      (g) => [g.dataset.version, JSON.parse(g.dataset.values)]));
  }
  const confusion = [...document.querySelectorAll("#confusion tr[data-label]")].map(
    (tr) => [...tr.querySelectorAll("td")].map((td) => Number(td.textContent || 0)));
  return {
    to: document.getElementById("updated").dataset.to || null,
    stable: text(document.getElementById("stable-version")),
    canary: text(document.getElementById("canary-version")),
    rows, charts, confusion,
    confusionVersion: document.getElementById("confusion-version").value,
  };
}"""


def pct(x):
    return None if x is None else x * 100


def shown_number(text: str) -> float | None:
    """The first number in a cell, or None for the dash of 'nothing to compute'."""
    head = text.split(" ")[0]
    return None if head == "\u2013" else float(head)


def close(shown: float | None, value: float | None, unit: float) -> bool:
    return (shown is None and value is None) or (
        shown is not None and value is not None and abs(shown - value) <= unit / 2 + 1e-9
    )


def send_traffic(url: str, images) -> list[dict]:
    answers = []
    for image in images:
        r = requests.post(f"{url}/v1/predict", data=as_upload(image), timeout=60)
        assert r.status_code == 200, r.text
        answers.append(r.json())
    for answer, label in zip(
        answers[:3], (answers[0]["digit"], (answers[1]["digit"] + 1) % 10, 4), strict=True
    ):
        r = requests.post(f"{url}/v1/predictions/{answer['id']}/feedback", json={"label": label}, timeout=60)
        assert r.status_code == 200, r.text
    return answers


def test_the_page_shows_the_scorecard_it_reads(browser, gateway_server, mnist_test_set, tmp_path):  # noqa: F811
    url = gateway_server.url
    images, _ = mnist_test_set
    # Counted over an hour, which holds the whole session: over the default 10 minutes, older traffic of other
    # tests could slide out of the window while this test waits, and the counts go down, not up.
    counting = f"{url}/v1/models/mnist/scorecard?window=3600"
    before = requests.get(counting, timeout=60).json()
    labels_before = sum(v["feedback"]["labels"] for v in before["versions"] if v["version"] == 1)
    requests_before = sum(v["requests"] for v in before["versions"] if v["version"] == 1)
    answers = send_traffic(url, images[10:16])
    version = answers[0]["model"]["version"]

    def counted():  # the feedback (counted at once) and the predictions (by the store's shipper)
        card = requests.get(counting, timeout=60).json()
        [v] = [v for v in card["versions"] if v["version"] == version]
        return v["feedback"]["labels"] >= labels_before + 3 and v["requests"] >= requests_before + len(
            answers
        )

    eventually(counted, what="the scorecard counting the traffic", timeout_s=90, interval_s=0.5)

    page = browser.new_page(viewport={"width": 1280, "height": 1500})
    seen = watch(page, url)
    drawn: dict[str, dict] = {}

    def keep(response):
        if "/scorecard" in response.url and response.status == 200:
            body = response.json()
            drawn[body["window"]["to"]] = body

    page.on("response", keep)
    page.goto(url + "/rollouts")
    assert page.url.endswith("/rollouts?model=mnist")  # the gateway names its model
    assert page.title() == "Model versions: scorecard"
    page.wait_for_function("() => document.getElementById('updated').dataset.to !== undefined")

    snapshot = page.evaluate(SNAPSHOT)
    card = drawn[snapshot["to"]]  # the answer the page drew last
    check_page_matches(snapshot, card)
    [v] = [v for v in card["versions"] if v["version"] == version]
    assert v["feedback"]["labels"] >= 3 and v["requests"] >= len(answers)  # this test's, at least
    assert v["latency_ms"]["p99"] is not None and sum(v["digits"]) >= len(answers)

    # Another window: a new request, drawn the same way.
    with page.expect_response(lambda r: "window=3600" in r.url):
        page.select_option("#window", "3600")
    page.wait_for_function(
        "(seen) => document.getElementById('updated').dataset.to !== seen", arg=snapshot["to"]
    )
    snapshot = page.evaluate(SNAPSHOT)
    card = drawn[snapshot["to"]]
    assert card["window"]["seconds"] == 3600
    check_page_matches(snapshot, card)

    shot = tmp_path / "rollouts.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("MNIST_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, SCREENSHOT)
    assert seen == {"errors": [], "outside": []}
    page.close()


def check_page_matches(snapshot: dict, card: dict) -> None:
    assert snapshot["stable"] == (f"v{card['stable_version']}" if card["stable_version"] else "\u2013")
    assert snapshot["canary"] == (f"v{card['canary_version']}" if card["canary_version"] else "\u2013")
    assert list(snapshot["rows"]) == [str(v["version"]) for v in card["versions"]]
    for v in card["versions"]:
        row = snapshot["rows"][str(v["version"])]
        assert row["version"].startswith(f"v{v['version']}")
        for field in ("requests", "errors", "shadow", "labels"):
            value = v["feedback"]["labels"] if field == "labels" else v[field]
            assert row[field] == str(value), (field, row, v)
        assert close(shown_number(row["error_rate"]), pct(v["error_rate"]), 0.1), row
        assert close(shown_number(row["p50"]), v["latency_ms"]["p50"], 0.1), row
        assert close(shown_number(row["p99"]), v["latency_ms"]["p99"], 0.1), row
        assert close(shown_number(row["accuracy"]), pct(v["feedback"]["accuracy"]), 0.1), row
        assert close(shown_number(row["agreement"]), pct(v["agreement"]["rate"]), 0.1), row
        series = v["series"]
        charts = {name: values[str(v["version"])] for name, values in snapshot["charts"].items()}
        assert charts["chart-requests"] == [p["requests"] for p in series]
        assert charts["chart-p99"] == [p["p99"] for p in series]
        assert charts["chart-errors"] == [
            p["errors"] / (p["requests"] + p["errors"]) if p["requests"] + p["errors"] else None
            for p in series
        ]
        assert charts["chart-accuracy"] == [
            p["correct"] / p["labels"] if p["labels"] else None for p in series
        ]
    [chosen] = [v for v in card["versions"] if str(v["version"]) == snapshot["confusionVersion"]]
    assert snapshot["confusion"] == chosen["confusion"], json.dumps(chosen["confusion"])


@pytest.mark.parametrize("width", [390, 1280])
def test_the_page_fits_the_screen(browser, gateway_server, width):  # noqa: F811
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    page.goto(gateway_server.url + "/rollouts")
    page.wait_for_function("() => document.getElementById('updated').dataset.to !== undefined")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    context.close()

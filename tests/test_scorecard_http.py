"""`GET /v1/models/{name}/scorecard` on the real `mnist-gateway` (real model server, real Cassandra): its
bounds just under and over, feedback sent over HTTP showing up in it and in Prometheus, and its cache (one
computation however many ask at once)."""

from __future__ import annotations

import re
import threading
from types import SimpleNamespace

import pytest
import requests
from prometheus_client import CollectorRegistry

from gateway import scorecard
from gateway.metrics import GatewayMetrics
from gateway.rollout import RolloutState
from gateway.routes.scorecard import VERSIONS_PATTERN
from gateway.scorecard_service import ScorecardService, cache_seconds
from gateway.settings import Settings
from tests.fixtures.gateway_server import OPS_TOKEN
from tests.test_gateway_e2e import as_upload, mnist_test_set  # noqa: F401 - a fixture
from tests.waiting import eventually


def get(url: str, **params) -> requests.Response:
    return requests.get(f"{url}/v1/models/mnist/scorecard", params=params, timeout=60)


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"window": "59"}, 400),
        ({"window": "60"}, 200),
        ({"window": "604800"}, 200),
        ({"window": "604801"}, 400),
        ({"window": "6e2"}, 400),
        ({"window": ""}, 400),
        ({"versions": "1,2,3,4,5,6,7,8"}, 200),
        ({"versions": "1,2,3,4,5,6,7,8,9"}, 400),
        ({"versions": "0"}, 400),
        ({"versions": "1,"}, 400),
        ({"versions": "9" * 18}, 200),
        ({"versions": "1" + "0" * 18}, 400),
    ],
)
def test_window_and_versions_just_under_and_over_their_bounds(gateway_server, params, status):
    r = get(gateway_server.url, **params)
    assert r.status_code == status, r.text
    if status == 400:
        assert r.json()["error"]["code"] == "invalid_input"
    else:
        assert r.json()["window"]["seconds"] == int(params.get("window", 600))


def test_another_model_is_a_404_and_asked_versions_are_shown(gateway_server):
    r = requests.get(f"{gateway_server.url}/v1/models/other/scorecard", timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    card = get(gateway_server.url, versions="5,2").json()
    # The label's version (the test model server's stable is v1) first, then those asked for.
    assert card["stable_version"] == 1
    assert [v["version"] for v in card["versions"]] == [1, 5, 2]
    empty = card["versions"][1]
    assert empty["requests"] == 0 and empty["feedback"]["accuracy"] is None


def test_the_openapi_document_repeats_the_versions_rule(gateway_server):
    spec = requests.get(f"{gateway_server.url}/openapi.json", timeout=30).json()
    [versions] = [
        p
        for p in spec["paths"]["/v1/models/{name}/scorecard"]["get"]["parameters"]
        if p.get("name") == "versions"
    ]
    assert versions["schema"]["pattern"] == VERSIONS_PATTERN


def metric(text: str, name: str, version: int) -> float:
    found = re.search(rf'^{name}_total{{model="mnist",version="{version}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def feedback_numbers(url: str, window: str = "3600") -> tuple[dict, dict]:
    """Version 1's scorecard and feedback metrics. The window holds the whole session: over a short one, older
    traffic of other tests slides out while a test waits, and differences stop adding up."""
    card = get(url, window=window).json()
    [v1] = [v for v in card["versions"] if v["version"] == 1]
    text = requests.get(f"{url}/metrics", timeout=30).text
    prom = {
        name: metric(text, f"gateway_feedback_{name}", 1) for name in ("labels", "correct", "corrections")
    }
    return v1, prom


def test_feedback_over_http_counts_once_in_the_scorecard_and_in_prometheus(
    gateway_server,
    mnist_test_set,  # noqa: F811
):
    url = gateway_server.url
    images, _ = mnist_test_set
    # Nothing of earlier tests still on its way to Cassandra; a window no other test asks for (not cached),
    # holding the same traffic as feedback_numbers' (none is an hour old).
    eventually(
        lambda: re.search(
            r"^gateway_spool_depth 0\.0$", requests.get(f"{url}/metrics", timeout=30).text, re.M
        )
    )
    sent_before, _ = feedback_numbers(url, window="3601")
    answers = []
    for image in images[:3]:
        r = requests.post(f"{url}/v1/predict", data=as_upload(image), timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["model"]["version"] == 1
        answers.append(r.json())
    before, prom_before = feedback_numbers(url)
    right, wrong, changed = answers

    def send(answer, label, *, operator=False):
        headers = {"Authorization": f"Bearer {OPS_TOKEN}"} if operator else {}
        return requests.post(
            f"{url}/v1/predictions/{answer['id']}/feedback",
            json={"label": label},
            headers=headers,
            timeout=60,
        ).status_code

    other = lambda answer: (answer["digit"] + 1) % 10  # noqa: E731 - a label that is wrong
    assert send(right, right["digit"]) == 200
    assert send(right, right["digit"]) == 200  # the same again: nothing more
    assert send(wrong, other(wrong)) == 200
    assert send(wrong, wrong["digit"]) == 409  # refused: nothing counted
    assert send(changed, changed["digit"]) == 200
    assert send(changed, other(changed), operator=True) == 200  # moved: right -> wrong

    def settled():
        v1, prom = feedback_numbers(url)
        return (v1, prom) if v1["feedback"]["labels"] - before["feedback"]["labels"] == 3 else None

    after, prom_after = eventually(settled, what="the scorecard's feedback", timeout_s=60, interval_s=0.5)
    # The three predictions, counted by the store's shipper: no rollout, so all `stable`.
    assert after["requests"] - sent_before["requests"] == 3
    assert after["routing"]["stable"] - sent_before["routing"]["stable"] == 3
    assert sum(after["digits"]) - sum(sent_before["digits"]) == 3
    assert after["latency_ms"]["p50"] is not None
    assert after["feedback"]["correct"] - before["feedback"]["correct"] == 1
    confusion_added = {
        (t, p): after["confusion"][t][p] - before["confusion"][t][p]
        for t in range(10)
        for p in range(10)
        if after["confusion"][t][p] != before["confusion"][t][p]
    }
    expected: dict = {}
    for label, digit in (
        (right["digit"],) * 2,
        (other(wrong), wrong["digit"]),
        (other(changed), changed["digit"]),
    ):
        expected[(label, digit)] = expected.get((label, digit), 0) + 1
    assert confusion_added == expected
    labels, correct = after["feedback"]["labels"], after["feedback"]["correct"]
    assert after["feedback"]["accuracy"] == pytest.approx(correct / labels, abs=1e-6)
    assert after["feedback"]["interval"] == pytest.approx(list(scorecard.wilson(correct, labels)), abs=1e-6)
    # Prometheus counts first labels (3, two of them right when given) and the operator's correction.
    assert {k: prom_after[k] - prom_before[k] for k in prom_after} == {
        "labels": 3,
        "correct": 2,
        "corrections": 1,
    }


class CountingStore:
    """Counts the scorecard's reads (the cache's business is how often they happen)."""

    def __init__(self) -> None:
        self.reads = 0
        self.release = threading.Event()

    def read_rollout(self, model_name):
        return None

    def version_stats(self, model_name, versions, start, end):
        self.reads += 1
        self.release.wait(30)
        return {v: [] for v in versions}


class NoModelServer:
    def model_status(self, **_):
        from gateway.errors import ModelUnavailable

        raise ModelUnavailable("down")


def test_many_asking_at_once_cost_one_read_per_period():
    now = [100.0]
    service = ScorecardService(clock=lambda: now[0])
    store = CountingStore()
    svc = SimpleNamespace(
        settings=Settings(),
        store=store,
        model_client=NoModelServer(),
        metrics=GatewayMetrics(CollectorRegistry()),
    )
    answers: list[dict] = []
    threads = [
        threading.Thread(target=lambda: answers.append(service.card(svc, 600, (3,)))) for _ in range(20)
    ]
    for t in threads:
        t.start()
    eventually(lambda: store.reads == 1, what="the first read")
    store.release.set()
    for t in threads:
        t.join(30)
    assert len(answers) == 20 and store.reads == 1
    assert [v["version"] for v in answers[0]["versions"]] == [3]  # no model server: only the asked version
    now[0] += cache_seconds(600) - 0.01
    service.card(svc, 600, (3,))
    assert store.reads == 1
    now[0] += 0.02
    service.card(svc, 600, (3,))
    assert store.reads == 2
    service.card(svc, 3600, (3,))  # another window is another answer
    assert store.reads == 3
    assert cache_seconds(600) == 3.0 and cache_seconds(scorecard.MAX_WINDOW_S) == 60.0


class RolloutStore(CountingStore):
    def __init__(self, rollout) -> None:
        super().__init__()
        self.rollout = rollout
        self.release.set()

    def read_rollout(self, model_name):
        return self.rollout


class OneLoaded:
    def model_status(self, **_):
        return [SimpleNamespace(version=4, state="AVAILABLE")]


def test_a_single_loaded_version_is_stable_before_any_answer():
    svc = SimpleNamespace(
        settings=Settings(),
        store=RolloutStore(None),
        model_client=OneLoaded(),
        metrics=GatewayMetrics(CollectorRegistry()),
    )
    assert ScorecardService(clock=lambda: 0.0).card(svc, 600, ())["stable_version"] == 4


class ThreeLoaded:
    """Versions 1-3 loaded; like TF Serving, GetModelStatus lists them all whatever label is asked."""

    def model_status(self, **_):
        return [SimpleNamespace(version=v, state="AVAILABLE") for v in (3, 2, 1)]


def record(status: str, percent: int = 0) -> RolloutState:
    """A rollout of version 3 over stable 1, as its record stands."""
    return RolloutState(status, canary_version=3, stable_version=1, canary_percent=percent, shadow=False)


@pytest.mark.parametrize(
    ("rollout", "seen", "stable", "canary"),
    [
        (None, None, None, None),  # nothing says which of 3 loaded is `stable`: no roles, not the highest
        (None, 2, 2, None),  # the version that last answered the label here
        (record("running", 5), 1, 1, 3),
        (record("running", 5), None, 1, 3),  # no answer yet: the record says
        (record("running", 5), 2, 2, 3),  # the label moved by hand meanwhile: its answers say where to
        (record("promoted"), None, 3, None),
        (record("promoted"), 3, 3, None),
        # A rollout that ended long ago, then `mnist-models promote 2` by hand: the label answers with 2, and
        # the old record names neither the stable version nor a canary.
        (record("rolled_back"), 2, 2, None),
        (record("aborted"), 2, 2, None),
        (record("rolled_back"), None, 1, None),
        (record("aborted"), None, 1, None),
    ],
)
def test_stable_is_the_labels_version_not_the_highest_loaded(rollout, seen, stable, canary):
    metrics = GatewayMetrics(CollectorRegistry())
    settings = Settings()
    if seen is not None:
        metrics.saw_model_version(settings.model_name, settings.model_label, seen)
    svc = SimpleNamespace(
        settings=settings, store=RolloutStore(rollout), model_client=ThreeLoaded(), metrics=metrics
    )
    card = ScorecardService(clock=lambda: 0.0).card(svc, 600, ())
    assert (card["stable_version"], card["canary_version"]) == (stable, canary)
    assert [v["version"] for v in card["versions"]][: 1 if stable else 0] == ([stable] if stable else [])


def test_feedback_metrics_label_at_most_32_versions_per_process():
    from prometheus_client import generate_latest

    from gateway.metrics import MAX_VERSION_LABELS, GatewayMetrics

    metrics = GatewayMetrics()
    for version in range(1, MAX_VERSION_LABELS + 1):
        metrics.count_feedback("mnist", version, "first", right=True)
    metrics.count_feedback("mnist", MAX_VERSION_LABELS + 1, "first", right=False)  # one too many
    metrics.count_feedback("mnist", 1, "same", right=True)  # a repeat: nothing
    text = generate_latest(metrics.registry).decode()
    assert metric(text, "gateway_feedback_labels", 1) == 1
    assert metric(text, "gateway_feedback_labels", MAX_VERSION_LABELS) == 1
    assert 'gateway_feedback_labels_total{model="mnist",version="other"} 1.0' in text
    assert f'version="{MAX_VERSION_LABELS + 1}"' not in text
    assert text.count("gateway_feedback_correct_total{") == MAX_VERSION_LABELS

"""Rollouts through the gateway over real HTTP, on the real Cassandra node: the state's routes, the split as
two gateways apply it, shadow copies linked to their user's prediction, and the version_stats counters.

The model server is a small double that answers per version (the split and the counters are the gateway's;
tests/test_gateway_e2e.py has the real model server).
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import requests

from gateway.app import create_app
from gateway.errors import ModelUnavailable
from gateway.model_client import Prediction
from gateway.rollout import bucket
from gateway.settings import Settings
from gateway.store import PredictionStore, stats
from tests.fixtures.cassandra_node import qualified
from tests.fixtures.gateway_server import LiveGateway
from tests.test_gateway_e2e import metric
from tests.test_gateway_http import png
from tests.waiting import eventually

TOKEN = "rollout-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class VersionedModel:
    """Version 1 (`stable`) always says 3; version 2 says 3 and 5 in turn, so shadow pairs both agree and
    disagree. Calls for `block_version` wait for `release` (a slow shadow); calls for `fail_versions` fail."""

    def __init__(
        self, model_name: str, *, block_version: int | None = None, fail_versions: tuple[int, ...] = ()
    ):
        self.model_name = model_name
        self.block_version = block_version
        self.fail_versions = fail_versions
        self.release = threading.Event()
        self.blocked = threading.Event()
        self.calls: list[tuple[str | None, int | None]] = []
        self._turn = 0
        self._lock = threading.Lock()

    def predict(self, images, *, label=None, version=None):
        answering = version if version is not None else {"stable": 1}[label]
        with self._lock:
            self.calls.append((label, version))
            self._turn += answering == 2
            turn = self._turn
        if answering in self.fail_versions:
            raise ModelUnavailable(f"version {answering} is down")
        if answering == self.block_version:
            self.blocked.set()
            self.release.wait(30)
        digit = 3 if answering == 1 or turn % 2 else 5
        probabilities = np.full((len(images), 10), 0.01, dtype=np.float32)
        probabilities[:, digit] = 0.91
        return Prediction(probabilities, np.full(len(images), digit), self.model_name, answering)

    def model_status(self, *, label=None, version=None):
        return []

    def close(self) -> None:
        pass


@pytest.fixture
def model_name() -> str:
    """A model of this test's own: its rollout row and counters are its alone."""
    return f"rollout_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_gateway(cassandra_node, clean_tables, tmp_path, model_name):
    made: list[tuple[LiveGateway, PredictionStore]] = []

    def make(model=None, **settings) -> tuple[LiveGateway, VersionedModel]:
        model = model or VersionedModel(model_name)
        store = PredictionStore(
            [cassandra_node.host],
            cassandra_node.port,
            clean_tables,
            tmp_path / f"spool-{len(made)}",
            credentials=cassandra_node.credentials,
            write_linger=0,
        )
        app = create_app(
            Settings(**{"model_name": model_name, "ops_token": TOKEN, "rollout_refresh_s": 0.5, **settings}),
            model_client=model,
            store=store,
        )
        gateway = LiveGateway(app).__enter__()
        made.append((gateway, store))
        return gateway, model

    yield make
    for gateway, store in made:
        gateway.__exit__(None, None, None)
        gateway.app.extensions["mnist_gateway"].close()
        store.close()


def state(**changes) -> dict:
    now = datetime.now(UTC)
    body = {
        "status": "running",
        "canary_version": 2,
        "stable_version": 1,
        "canary_percent": 50,
        "shadow": False,
        "steps": [5, 50, 100],
        "step_index": 1,
        "step_seconds": 300,
        "step_started_at": now.isoformat(),
        "lease_until": (now + timedelta(minutes=10)).isoformat(),
        "started_by": "tests",
        "started_at": now.isoformat(),
        "reason": None,
        "if_updated_at": None,
        "event": {"actor": "tests", "action": "start", "detail": {"why": "a test"}},
    }
    body.update(changes)
    return body


def put(gateway: LiveGateway, name: str, body: dict, headers=AUTH) -> requests.Response:
    return requests.put(f"{gateway.url}/v1/models/{name}/rollout", json=body, headers=headers, timeout=30)


def wait_until_applied(gateway: LiveGateway, model: str, **expected) -> None:
    """Until the gateway's rollout cache holds a state with these values (no request sent meanwhile)."""
    cache = gateway.app.extensions["mnist_gateway"].rollouts

    def applied() -> bool:
        current = cache.get(model)
        return current is not None and all(getattr(current, k) == v for k, v in expected.items())

    eventually(applied, what="the gateway to read the rollout", timeout_s=10, interval_s=0.1)


def predict(gateway: LiveGateway, client: str | None = None, **params) -> requests.Response:
    headers = {"X-Client-Id": client} if client is not None else {}
    return requests.post(
        f"{gateway.url}/v1/predict",
        files={"image": ("d.png", png(), "image/png")},
        params=params,
        headers=headers,
        timeout=30,
    )


# --- the state's routes ----------------------------------------------------------------------------------


def test_put_then_get_round_trips_the_state_its_history_and_what_applies(make_gateway, model_name):
    gateway, _ = make_gateway()
    empty = requests.get(f"{gateway.url}/v1/models/{model_name}/rollout", timeout=30).json()
    assert empty == {
        "model": model_name,
        "state": None,
        "effective": {"canary_percent": 0, "shadow": False},
        "events": [],
    }
    sent = state(shadow=True)
    answer = put(gateway, model_name, sent)
    assert answer.status_code == 200, answer.text
    stored = answer.json()["state"]
    assert datetime.fromisoformat(stored.pop("updated_at")) <= datetime.now(UTC)
    for name in ("step_started_at", "lease_until", "started_at"):  # milliseconds, UTC
        assert abs(
            datetime.fromisoformat(stored.pop(name)) - datetime.fromisoformat(sent.pop(name))
        ) < timedelta(milliseconds=1)
    del sent["if_updated_at"], sent["event"]
    assert stored == sent
    got = requests.get(f"{gateway.url}/v1/models/{model_name}/rollout", timeout=30).json()
    assert got["state"] == answer.json()["state"]
    assert got["effective"] == {"canary_percent": 50, "shadow": True}
    assert [
        (e["actor"], e["action"], e["canary_version"], e["canary_percent"], e["detail"])
        for e in got["events"]
    ] == [("tests", "start", 2, 50, {"why": "a test"})]
    # An expired lease: the state is kept, nothing applies.
    expired = state(
        lease_until=(datetime.now(UTC) - timedelta(seconds=1)).isoformat(),
        if_updated_at=got["state"]["updated_at"],
        event={"actor": "tests", "action": "step", "detail": None},
    )
    assert put(gateway, model_name, expired).json()["effective"] == {"canary_percent": 0, "shadow": False}
    events = requests.get(f"{gateway.url}/v1/models/{model_name}/rollout", timeout=30).json()["events"]
    assert [e["action"] for e in events] == ["step", "start"]  # newest first


def test_a_stale_or_missing_if_updated_at_is_a_409(make_gateway, model_name):
    gateway, _ = make_gateway()
    first = put(gateway, model_name, state()).json()["state"]
    again = put(gateway, model_name, state())  # null while one is running
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    step = {"actor": "tests", "action": "step", "detail": None}
    second = put(
        gateway,
        model_name,
        state(canary_percent=100, step_index=2, if_updated_at=first["updated_at"], event=step),
    )
    assert second.status_code == 200 and second.json()["state"]["updated_at"] > first["updated_at"]
    stale = put(
        gateway,
        model_name,
        state(canary_percent=5, step_index=0, if_updated_at=first["updated_at"], event=step),
    )
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "conflict"
    assert (
        requests.get(f"{gateway.url}/v1/models/{model_name}/rollout", timeout=30).json()["state"][
            "canary_percent"
        ]
        == 100
    )
    # Once it is not running, a new rollout may start without naming the old one.
    abort = {"actor": "tests", "action": "abort", "detail": None}
    stopped = put(
        gateway,
        model_name,
        state(status="aborted", if_updated_at=second.json()["state"]["updated_at"], event=abort),
    )
    assert stopped.status_code == 200
    assert put(gateway, model_name, state()).status_code == 200


def test_an_if_updated_at_at_the_end_of_time_is_a_409_that_changes_nothing(make_gateway, model_name):
    """The last millisecond a timestamp holds is never a stored `updated_at` (each write is stamped near its
    own time): a write naming it is stale like any other, with or without a stored rollout."""
    gateway, _ = make_gateway()
    step = {"actor": "tests", "action": "step", "detail": None}
    end_of_time = state(
        canary_percent=100, step_index=2, if_updated_at="9999-12-31T23:59:59.999Z", event=step
    )

    def refused() -> dict:
        answer = put(gateway, model_name, end_of_time)
        assert answer.status_code == 409, answer.text
        assert answer.json()["error"]["code"] == "conflict"
        return requests.get(f"{gateway.url}/v1/models/{model_name}/rollout", timeout=30).json()

    assert refused()["state"] is None
    first = put(gateway, model_name, state()).json()["state"]
    after = refused()
    assert after["state"] == first and [e["action"] for e in after["events"]] == ["start"]


def test_put_needs_the_token_and_get_does_not(make_gateway, model_name):
    gateway, _ = make_gateway()
    assert put(gateway, model_name, state(), headers={}).status_code == 401
    assert put(gateway, model_name, state(), headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert requests.get(f"{gateway.url}/v1/models/{model_name}/rollout", timeout=30).json()["state"] is None
    closed, _ = make_gateway(ops_token="")
    assert put(closed, model_name, state()).status_code == 403


@pytest.mark.parametrize(
    ("ok", "bad"),
    [
        ({"canary_percent": 100, "step_index": 2}, {"canary_percent": 101, "step_index": 2}),
        ({"started_by": "a" * 128}, {"started_by": "a" * 129}),
        ({"steps": [1, 50, 100]}, {"steps": [1, 50, 101]}),
        # Running, the split is the step's percentage, and there is a step to be on.
        ({"canary_percent": 5, "step_index": 0}, {"canary_percent": 5}),
        (
            {"status": "aborted", "steps": [], "step_index": 0, "canary_percent": 0},
            {"steps": [], "step_index": 0, "canary_percent": 0},
        ),
    ],
)
def test_put_limits_over_http(make_gateway, model_name, ok, bad):
    gateway, _ = make_gateway()
    refused = put(gateway, model_name, state(**bad))
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_input"
    assert put(gateway, model_name, state(**ok)).status_code == 200
    bad_name = requests.get(f"{gateway.url}/v1/models/{'m' * 65}/rollout", timeout=30)
    assert bad_name.status_code == 400
    assert requests.get(f"{gateway.url}/v1/models/{'m' * 64}/rollout", timeout=30).status_code == 200


def test_a_lease_more_than_an_hour_ahead_of_the_gateway_is_refused(make_gateway, model_name):
    """A forged or buggy lease would keep the canary live for ever: an hour ahead is the most a PUT may set
    (30 s either side of it: the time this request takes)."""
    gateway, _ = make_gateway()
    for too_far in ((datetime.now(UTC) + timedelta(hours=1, seconds=30)).isoformat(), "9999-12-31T23:59:59Z"):
        refused = put(gateway, model_name, state(lease_until=too_far))
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_input"
        assert "'lease_until' must be at most 3600 s" in refused.json()["error"]["message"]
    assert requests.get(f"{gateway.url}/v1/models/{model_name}/rollout", timeout=30).json()["state"] is None
    within = (datetime.now(UTC) + timedelta(hours=1, seconds=-30)).isoformat()
    assert put(gateway, model_name, state(lease_until=within)).status_code == 200


def test_the_client_id_header_is_bounded(make_gateway):
    gateway, _ = make_gateway()
    assert predict(gateway, "c" * 128).status_code == 200
    too_long = predict(gateway, "c" * 129)
    assert too_long.status_code == 400 and "X-Client-Id" in too_long.json()["error"]["message"]
    assert predict(gateway, "tab\tinside").status_code == 400


# --- the split, as two gateways apply it -----------------------------------------------------------------


def test_two_gateways_on_one_cassandra_apply_a_change_within_the_refresh(make_gateway, model_name):
    a, _ = make_gateway()
    b, _ = make_gateway()
    before = predict(b, "client-1").json()["model"]
    assert (before["routing"], before["version"], before["label"]) == ("stable", 1, "stable")
    written = put(a, model_name, state(canary_percent=100, step_index=2)).json()["state"]

    def routed_to_canary(gateway: LiveGateway) -> bool:
        return predict(gateway, "client-1").json()["model"]["routing"] == "canary"

    # The refresh is 0.5 s: the timeout only bounds a hang.
    for gateway in (a, b):
        eventually(lambda g=gateway: routed_to_canary(g), what="the canary", timeout_s=10, interval_s=0.1)
    canary = predict(b, "client-1").json()["model"]
    assert (canary["version"], canary["label"]) == (2, None)
    pinned = predict(b, "client-1", label="stable").json()["model"]
    assert (pinned["routing"], pinned["version"]) == ("pinned", 1)
    # Back to stable: the lease ends.
    abort = {"actor": "tests", "action": "abort", "detail": None}
    put(a, model_name, state(status="aborted", if_updated_at=written["updated_at"], event=abort))
    for gateway in (a, b):
        eventually(
            lambda g=gateway: not routed_to_canary(g), what="stable again", timeout_s=10, interval_s=0.1
        )


def test_a_split_is_sticky_per_client(make_gateway, model_name):
    gateway, _ = make_gateway()
    put(gateway, model_name, state(canary_percent=50))
    eventually(
        lambda: any(predict(gateway, f"c{i}").json()["model"]["routing"] == "canary" for i in range(20)),
        what="the split",
        timeout_s=10,
    )
    seen = {
        f"c{i}": {predict(gateway, f"c{i}").json()["model"]["routing"] for _ in range(3)} for i in range(20)
    }
    assert all(len(sides) == 1 for sides in seen.values())
    assert {side for sides in seen.values() for side in sides} == {"stable", "canary"}


def test_a_failing_canary_answers_from_stable_and_counts_the_error(
    make_gateway, model_name, cassandra_session, clean_tables
):
    model = VersionedModel(model_name, fail_versions=(2,))
    gateway, _ = make_gateway(model)
    put(gateway, model_name, state(canary_percent=100, step_index=2))
    wait_until_applied(gateway, model_name, canary_percent=100)
    answers = [predict(gateway, f"x{i}") for i in range(3)]
    assert [a.status_code for a in answers] == [200] * 3
    assert {(a.json()["model"]["routing"], a.json()["model"]["version"]) for a in answers} == {("stable", 1)}
    assert model.calls == [(None, 2), ("stable", None)] * 3
    eventually(
        lambda: counters(cassandra_session, clean_tables, model_name, 2).get(stats.ERRORS) == 3,
        what="the canary's errors",
        timeout_s=30,
    )


def test_an_outage_counts_the_fallbacks_failure_against_stable(
    make_gateway, model_name, cassandra_session, clean_tables
):
    """The model server fails both versions: a canary request fails, so does stable's fallback. Each failure
    counts against its own version, so the error-rate guard sees stable failing as much as the canary (only
    the canary blamed, a healthy canary would be rolled back for an outage)."""
    model = VersionedModel(model_name, fail_versions=(1, 2))
    gateway, _ = make_gateway(model)
    put(gateway, model_name, state(canary_percent=100, step_index=2))
    wait_until_applied(gateway, model_name, canary_percent=100)
    answers = [predict(gateway, f"x{i}") for i in range(3)]
    assert [a.status_code for a in answers] == [503] * 3
    assert {a.json()["error"]["code"] for a in answers} == {"model_unavailable"}
    assert model.calls == [(None, 2), ("stable", None)] * 3

    def errors() -> tuple:
        return tuple(
            counters(cassandra_session, clean_tables, model_name, version).get(stats.ERRORS)
            for version in (1, 2)
        )

    eventually(lambda: errors() == (3, 3), what="both versions' errors", timeout_s=30)


# --- shadows and counters --------------------------------------------------------------------------------


def recent_days() -> list:
    today = datetime.now(UTC).date()
    return [today - timedelta(days=1), today]


def counters(session, keyspace: str, model: str, version: int) -> dict[str, int]:
    select = session.prepare(
        "SELECT metric, value FROM "
        + qualified(keyspace, "version_stats")
        + " WHERE model_name = ? AND model_version = ? AND day = ?"
    )
    total: Counter = Counter()
    for day in recent_days():
        for row in session.execute(select, [model, version, day]):
            total[row.metric] += row.value
    return dict(total)


def rows_of(session, keyspace: str, model: str) -> list:
    select = session.prepare(
        "SELECT id, model_name, model_version, digit, routing, request_id FROM "
        + qualified(keyspace, "predictions_by_day")
        + " WHERE day = ?"
    )
    return [r for day in recent_days() for r in session.execute(select, [day]) if r.model_name == model]


def test_shadow_copies_are_linked_and_the_counters_equal_what_was_sent(
    make_gateway, model_name, cassandra_session, clean_tables
):
    gateway, _ = make_gateway()
    put(gateway, model_name, state(canary_percent=50, shadow=True))
    wait_until_applied(gateway, model_name, shadow=True)
    answers = [predict(gateway, f"client-{i}").json() for i in range(30)]
    answers += [predict(gateway, "pinned", version=1).json() for _ in range(3)]
    sent = answers
    routings = Counter((a["model"]["version"], a["model"]["routing"]) for a in sent)
    assert routings[(2, "canary")] and routings[(1, "stable")] and routings[(1, "pinned")] == 3
    unpinned = {a["id"] for a in sent if a["model"]["routing"] != "pinned"}

    def all_rows() -> list:
        found = rows_of(cassandra_session, clean_tables, model_name)
        return found if len(found) == len(sent) + len(unpinned) else []

    rows = eventually(all_rows, what="each answer's row and one shadow row per unpinned one", timeout_s=60)
    shadow_rows = [r for r in rows if r.routing == "shadow"]
    assert {str(r.request_id) for r in shadow_rows} == unpinned
    by_id = {a["id"]: a for a in sent}
    for row in shadow_rows:
        user = by_id[str(row.request_id)]
        assert row.model_version != user["model"]["version"]
    # The counters, per version, equal what the test saw.
    expected: dict[int, Counter] = {1: Counter(), 2: Counter()}
    user_rows = [r for r in rows if r.routing != "shadow"]
    for row in user_rows:
        e = expected[row.model_version]
        e[stats.REQUESTS] += 1
        e[stats.routing(row.routing)] += 1
        e[stats.digit(row.digit)] += 1
    digits_of = {str(r.id): r.digit for r in user_rows}
    for row in shadow_rows:
        user_version = 3 - row.model_version
        same = int(row.digit == digits_of[str(row.request_id)])
        for mine, other in ((row.model_version, user_version), (user_version, row.model_version)):
            expected[mine][stats.compared(other)] += 1
            expected[mine][stats.agreed(other)] += same
        expected[row.model_version][stats.SHADOW] += 1
        expected[row.model_version][stats.routing("shadow")] += 1
        expected[row.model_version][stats.digit(row.digit)] += 1
    assert sorted(str(r.id) for r in user_rows) == sorted(by_id)
    assert Counter((r.model_version, r.routing) for r in user_rows) == routings
    assert 0 < expected[1][stats.agreed(2)] < expected[1][stats.compared(2)]  # both outcomes happened

    def counted() -> bool:
        return all(
            {
                k: v
                for k, v in counters(cassandra_session, clean_tables, model_name, version).items()
                if not k.startswith("latency_ms:")
            }
            == {k: v for k, v in expected[version].items()}
            for version in (1, 2)
        )

    eventually(counted, what="version_stats", timeout_s=60)
    for version in (1, 2):
        got = counters(cassandra_session, clean_tables, model_name, version)
        assert (
            sum(v for k, v in got.items() if k.startswith("latency_ms:")) == expected[version][stats.REQUESTS]
        )
    assert (
        metric(
            requests.get(f"{gateway.url}/metrics", timeout=30).text,
            "gateway_shadow_copies_total",
            outcome="dropped",
        )
        == 0
    )


def test_a_shadow_copy_is_listed_as_one_and_takes_no_feedback(make_gateway, model_name, clean_tables):
    """A shadow copy is another version's answer the user never saw: the list and the lookup say so (routing
    `shadow`, the user's prediction as `request_id`), and feedback goes to the prediction the user got."""
    gateway, _ = make_gateway()
    put(gateway, model_name, state(canary_percent=50, shadow=True))
    wait_until_applied(gateway, model_name, shadow=True)
    user = predict(gateway, "client-0").json()

    def listed() -> list:
        items = requests.get(f"{gateway.url}/v1/predictions?limit=100", timeout=30).json()["items"]
        return items if len(items) == 2 else []

    items = eventually(listed, what="the user's prediction and its shadow copy listed", timeout_s=60)
    by_routing = {item["model"]["routing"]: item for item in items}
    assert set(by_routing) == {user["model"]["routing"], "shadow"}
    shadow, mine = by_routing["shadow"], by_routing[user["model"]["routing"]]
    assert mine["id"] == user["id"] and mine["request_id"] is None
    assert shadow["request_id"] == user["id"] and shadow["model"]["version"] != user["model"]["version"]
    looked_up = requests.get(f"{gateway.url}/v1/predictions/{shadow['id']}", timeout=30).json()
    assert looked_up["model"]["routing"] == "shadow" and looked_up["request_id"] == user["id"]
    refused = requests.post(
        f"{gateway.url}/v1/predictions/{shadow['id']}/feedback", json={"label": 3}, timeout=30
    )
    assert refused.status_code == 409, refused.text
    assert user["id"] in refused.json()["error"]["message"]
    taken = requests.post(
        f"{gateway.url}/v1/predictions/{user['id']}/feedback", json={"label": 3}, timeout=30
    )
    assert taken.status_code == 200, taken.text


def test_a_full_shadow_queue_drops_copies_without_slowing_the_user(make_gateway, model_name):
    model = VersionedModel(model_name, block_version=2)
    gateway, _ = make_gateway(model, shadow_queue=1)
    # 1 % to the canary, and clients the split puts on stable: version 2 answers their shadow copies.
    put(gateway, model_name, state(canary_percent=1, steps=[1, 100], step_index=0, shadow=True))
    clients = [c for c in (f"u{i}" for i in range(100)) if bucket(f"id:{c}", model_name, 2) >= 1][:5]
    wait_until_applied(gateway, model_name, shadow=True)
    try:
        assert predict(gateway, clients[0]).status_code == 200
        eventually(model.blocked.is_set, what="a busy shadow worker", timeout_s=10)
        # The worker is stuck on its copy: one more copy fits in the queue, the next three are dropped.
        answers = [predict(gateway, c) for c in clients[1:]]
        assert [a.status_code for a in answers] == [200] * 4
        assert {a.json()["model"]["routing"] for a in answers} == {"stable"}
        text = requests.get(f"{gateway.url}/metrics", timeout=30).text
        assert metric(text, "gateway_shadow_copies_total", outcome="dropped") == 3
    finally:
        model.release.set()
    eventually(
        lambda: (
            metric(
                requests.get(f"{gateway.url}/metrics", timeout=30).text,
                "gateway_shadow_copies_total",
                outcome="answered",
            )
            >= 2
        ),
        what="the queued copies answered",
        timeout_s=30,
    )


def test_abort_wins_over_a_driver_renewing_its_lease(make_gateway, model_name):
    """`mnist-models rollout --abort` while a driver still runs: the driver renews its lease between the
    abort's read and its write. The abort reads again and ends the rollout, instead of failing on a 409."""
    from serving.ops import rollout
    from serving.ops.gateway_client import GatewayClient

    gateway, _ = make_gateway()
    assert put(gateway, model_name, state()).status_code == 200

    class RacedByADriver(GatewayClient):
        renewals = 0

        def rollout(self, model: str) -> dict:
            answer = super().rollout(model)
            if self.renewals == 0:  # the driver's poll lands right after the abort's first read
                self.renewals += 1
                renewed = put(gateway, model, state(if_updated_at=answer["state"]["updated_at"], event=None))
                assert renewed.status_code == 200, renewed.text
            return answer

    raced = RacedByADriver(gateway.url, token=TOKEN)
    ended = rollout.abort(raced, model_name, say=lambda line: None, who="tests")
    assert raced.renewals == 1 and ended["status"] == "aborted"
    stored = requests.get(f"{gateway.url}/v1/models/{model_name}/rollout", timeout=30).json()
    assert stored["state"]["status"] == "aborted" and stored["effective"]["canary_percent"] == 0
    assert stored["events"][0]["action"] == "abort"

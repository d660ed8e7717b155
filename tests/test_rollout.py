"""The rollout's pure parts (gateway/rollout.py): where a request goes, what a PUT may hold, the cache."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from gateway.errors import InvalidInput, StoreUnavailable
from gateway.rollout import RolloutCache, RolloutState, Target, parse_write, route

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
STABLE = Target(label="stable")
KEYS = [f"id:client-{i}" for i in range(10_000)]


def running(percent: int, *, shadow: bool = False, lease: timedelta = timedelta(minutes=5)) -> RolloutState:
    return RolloutState(
        status="running",
        canary_version=2,
        stable_version=1,
        canary_percent=percent,
        shadow=shadow,
        lease_until=NOW + lease,
    )


def share(state: RolloutState | None, model: str = "mnist") -> float:
    canary = sum(route(k, model, state, NOW, stable=STABLE).reason == "canary" for k in KEYS)
    return 100 * canary / len(KEYS)


def test_a_client_always_lands_on_the_same_side():
    state = running(30)
    first = [route(k, "mnist", state, NOW, stable=STABLE) for k in KEYS[:500]]
    again = [route(k, "mnist", state, NOW + timedelta(seconds=30), stable=STABLE) for k in KEYS[:500]]
    assert first == again
    assert {r.reason for r in first} == {"stable", "canary"}
    canary = next(r for r in first if r.reason == "canary")
    assert canary.target == Target(version=2) and canary.expected_version == 2 and canary.shadow is None
    stable = next(r for r in first if r.reason == "stable")
    assert stable.target == STABLE and stable.expected_version == 1


@pytest.mark.parametrize("percent", [1, 5, 25, 50, 90])
def test_the_canary_share_of_10000_clients_is_the_percent_within_one_and_a_half_points(percent):
    # A fair hash puts each client in the canary with probability p: the share's standard deviation over
    # 10,000 clients is at most 0.5 points, so 1.5 points is three of them.
    assert abs(share(running(percent)) - percent) <= 1.5


def test_a_higher_percent_keeps_the_clients_already_on_the_canary():
    at_5 = {k for k in KEYS if route(k, "mnist", running(5), NOW, stable=STABLE).reason == "canary"}
    at_25 = {k for k in KEYS if route(k, "mnist", running(25), NOW, stable=STABLE).reason == "canary"}
    assert at_5 < at_25


def test_0_and_100_percent_are_exact():
    assert share(running(0)) == 0
    assert share(running(100)) == 100


def test_a_pinned_request_gets_what_it_named_whatever_the_rollout():
    for pinned in (Target(label="canary"), Target(version=7), Target(label="stable")):
        chosen = route("id:x", "mnist", running(100, shadow=True), NOW, stable=STABLE, pinned=pinned)
        assert (chosen.target, chosen.reason, chosen.shadow, chosen.expected_version) == (
            pinned,
            "pinned",
            None,
            None,
        )


@pytest.mark.parametrize(
    "state",
    [
        None,
        running(100, shadow=True, lease=timedelta(0)),  # the lease ends now
        running(100, shadow=True, lease=-timedelta(seconds=1)),
        RolloutState("running", 2, 1, 100, True, lease_until=None),
        RolloutState("aborted", 2, 1, 100, True, lease_until=NOW + timedelta(hours=1)),
        RolloutState("promoted", 2, 1, 100, True, lease_until=NOW + timedelta(hours=1)),
    ],
)
def test_no_live_rollout_sends_everyone_to_stable_without_shadows(state):
    assert share(state) == 0
    chosen = route("id:x", "mnist", state, NOW, stable=STABLE)
    assert (chosen.target, chosen.reason, chosen.shadow, chosen.expected_version) == (
        STABLE,
        "stable",
        None,
        None,
    )
    if state is not None:
        assert state.effective(NOW).canary_percent == 0 and state.effective(NOW).shadow is False


def test_shadow_copies_go_to_the_other_version():
    state = running(50, shadow=True)
    routes = [route(k, "mnist", state, NOW, stable=STABLE) for k in KEYS[:200]]
    assert all(r.shadow == STABLE for r in routes if r.reason == "canary")
    assert all(r.shadow == Target(version=2) for r in routes if r.reason == "stable")
    # Shadow alone (0 %): everyone on stable, the canary answers copies.
    only_shadow = route("id:x", "mnist", running(0, shadow=True), NOW, stable=STABLE)
    assert (only_shadow.reason, only_shadow.shadow) == ("stable", Target(version=2))


def test_the_split_depends_on_the_model_and_the_canary():
    a = {k for k in KEYS if route(k, "mnist", running(50), NOW, stable=STABLE).reason == "canary"}
    b = {k for k in KEYS if route(k, "digits", running(50), NOW, stable=STABLE).reason == "canary"}
    assert a != b


# --- what a PUT may hold ---------------------------------------------------------------------------------


def body(**changes) -> dict:
    base = {
        "status": "running",
        "canary_version": 2,
        "stable_version": 1,
        "canary_percent": 5,
        "shadow": False,
        "steps": [5, 25, 50, 100],
        "step_index": 0,
        "step_seconds": 300,
        "step_started_at": "2026-11-30T12:00:00Z",
        "lease_until": "2026-11-30T12:01:00+00:00",
        "started_by": "ops@example",
        "started_at": "2026-11-30T12:00:00.123Z",
        "reason": None,
        "if_updated_at": None,
        "event": {"actor": "ops@example", "action": "start", "detail": {"steps": [5, 25, 50, 100]}},
    }
    base.update(changes)
    return base


def test_a_whole_state_is_read_exactly():
    write = parse_write(body(), NOW)
    assert write.state == RolloutState(
        status="running",
        canary_version=2,
        stable_version=1,
        canary_percent=5,
        shadow=False,
        steps=(5, 25, 50, 100),
        step_index=0,
        step_seconds=300,
        step_started_at=NOW,
        lease_until=NOW + timedelta(minutes=1),
        started_by="ops@example",
        started_at=NOW + timedelta(milliseconds=123),
    )
    assert write.if_updated_at is None
    assert (write.event.actor, write.event.action, write.event.detail) == (
        "ops@example",
        "start",
        {"steps": [5, 25, 50, 100]},
    )


TOO_LONG_DETAIL = {"x": "a" * 7992}  # {"x":"..."} is 8 characters more: 8000 exactly


@pytest.mark.parametrize(
    ("ok", "bad"),
    [
        ({"status": "aborted", "canary_percent": 0}, {"status": "aborted", "canary_percent": -1}),
        ({"canary_percent": 100, "step_index": 3}, {"canary_percent": 101, "step_index": 3}),
        ({"canary_percent": 5.0}, {"canary_percent": 5.5}),
        ({"canary_percent": 5}, {"canary_percent": True}),
        ({"canary_version": 1, "stable_version": 2}, {"canary_version": 0}),
        ({"canary_version": 2**63 - 1}, {"canary_version": 2**63}),
        ({"stable_version": 3}, {"stable_version": 2}),  # the canary itself
        ({"status": "aborted"}, {"status": "paused"}),
        ({"shadow": True}, {"shadow": 1}),
        (
            {"steps": list(range(1, 101)), "step_index": 99, "canary_percent": 100},
            {"steps": list(range(1, 101)), "step_index": 100, "canary_percent": 100},
        ),
        ({"steps": [1, 100], "canary_percent": 1}, {"steps": [1, 101], "canary_percent": 1}),
        ({"steps": [1, 2], "canary_percent": 1}, {"steps": [0, 2], "canary_percent": 1}),
        ({"steps": [1, 2], "canary_percent": 1}, {"steps": [2, 2], "canary_percent": 1}),
        (
            {"status": "aborted", "steps": [], "step_index": 0, "canary_percent": 0},
            {"status": "aborted", "steps": [], "step_index": 1, "canary_percent": 0},
        ),
        # Running, the split is the step it is on; it needs a step to be on.
        ({"canary_percent": 25, "step_index": 1}, {"canary_percent": 25, "step_index": 2}),
        ({"steps": [100], "canary_percent": 100}, {"steps": [], "canary_percent": 0}),
        ({"step_seconds": 604800}, {"step_seconds": 604801}),
        ({"step_seconds": 1}, {"step_seconds": 0}),
        ({"step_seconds": None}, {"step_seconds": "300"}),
        ({"started_by": "a" * 128}, {"started_by": "a" * 129}),
        ({"started_by": "a"}, {"started_by": ""}),
        ({"started_by": "ops"}, {"started_by": "ops\n"}),
        ({"reason": "r" * 2000}, {"reason": "r" * 2001}),
        ({"lease_until": "2026-11-30T12:00:00+01:00"}, {"lease_until": "2026-11-30T12:00:00"}),
        ({"lease_until": None}, {"lease_until": "tomorrow"}),
        # At most an hour after the gateway's clock (NOW here): a lease must end a split nobody renews.
        ({"lease_until": "2026-11-30T13:00:00Z"}, {"lease_until": "2026-11-30T13:00:00.001Z"}),
        ({"lease_until": "2026-11-30T13:00:00+01:00"}, {"lease_until": "9999-12-31T23:59:59Z"}),
        # The calendar's edges: an offset that would carry the moment past them is refused, not a 500.
        ({"lease_until": "0001-01-01T00:00:00Z"}, {"lease_until": "0001-01-01T00:00:00+00:01"}),
        ({"started_at": "9999-12-31T23:59:59Z"}, {"started_at": "9999-12-31T23:59:59-01:00"}),
        ({"if_updated_at": "2026-11-30T12:00:00.001Z"}, {"if_updated_at": "2026-11-30T12:00:00Z" + " " * 20}),
        (
            {"event": {"actor": "a", "action": "set", "detail": None}},
            {"event": {"actor": "a", "action": "x", "detail": None}},
        ),
        (
            {"event": {"actor": "a", "action": "set", "detail": TOO_LONG_DETAIL}},
            {"event": {"actor": "a", "action": "set", "detail": {"x": "a" * 7993}}},
        ),
        (
            {"event": {"actor": "a" * 128, "action": "set", "detail": {}}},
            {"event": {"actor": "a" * 129, "action": "set", "detail": {}}},
        ),
        ({"event": {"actor": "a", "action": "set", "detail": {}}}, {"event": {"actor": "a", "detail": []}}),
    ],
)
def test_each_field_is_accepted_at_its_limit_and_refused_just_past_it(ok, bad):
    parse_write(body(**ok), NOW)
    with pytest.raises(InvalidInput):
        parse_write(body(**bad), NOW)


def test_a_lease_too_far_ahead_is_refused_with_the_rule_and_the_gateways_time():
    with pytest.raises(InvalidInput) as refused:
        parse_write(body(lease_until="2026-11-30T13:00:01Z"), NOW)
    assert refused.value.message == (
        "'lease_until' must be at most 3600 s (an hour) after the gateway's clock "
        "(2026-11-30T12:00:00.000Z); a driver renews its lease while it runs"
    )


def test_a_running_split_is_its_steps_percentage_and_an_ended_one_may_be_0():
    """What the driver writes: running at steps[step_index] %, then promoted, rolled back or aborted at 0 %
    (those keep the steps and the index the rollout ended on)."""
    for status in ("promoted", "rolled_back", "aborted"):
        assert parse_write(body(status=status, canary_percent=0, step_index=2), NOW).state.canary_percent == 0
    with pytest.raises(InvalidInput) as refused:
        parse_write(body(canary_percent=50, step_index=1), NOW)
    assert (
        refused.value.message
        == "a running rollout's 'canary_percent' must be its step's: steps[1] = 25, not 50"
    )
    with pytest.raises(InvalidInput, match="a running rollout needs at least one step in 'steps'"):
        parse_write(body(steps=[], canary_percent=0), NOW)


def test_missing_or_unknown_fields_are_named():
    incomplete = body()
    del incomplete["shadow"]
    with pytest.raises(InvalidInput, match="missing field.*shadow"):
        parse_write(incomplete)
    with pytest.raises(InvalidInput, match="unknown field.*percent"):
        parse_write(body(percent=5))
    for not_an_object in (None, [], "running", 5):
        with pytest.raises(InvalidInput):
            parse_write(not_an_object)


def test_a_null_event_is_a_write_without_a_history_line():
    """The driver renews its lease every few seconds: those writes are not events worth a line."""
    assert parse_write(body(event=None)).event is None
    with pytest.raises(InvalidInput):
        parse_write(body(event={}))


def test_a_detail_that_is_not_json_is_refused():
    with pytest.raises(InvalidInput):
        parse_write(body(event={"actor": "a", "action": "set", "detail": {"x": float("nan")}}))


# --- the cache -------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_cache_reads_at_most_once_per_refresh():
    reads: list[str] = []
    state = running(10)
    clock = Clock()
    cache = RolloutCache(lambda model: reads.append(model) or state, refresh_s=2.0, clock=clock)
    assert cache.get("mnist") is state and reads == ["mnist"]
    clock.now = 1.99
    assert cache.get("mnist") is state and reads == ["mnist"]
    clock.now = 2.0
    assert cache.get("mnist") is state and reads == ["mnist", "mnist"]


def test_an_unreadable_state_is_no_rollout_said_once(caplog):
    outcomes: list = [StoreUnavailable("Cassandra is down")] * 3 + [running(10)]
    clock = Clock()

    def read(model: str):
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    cache = RolloutCache(read, refresh_s=1.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="gateway.rollout"):
        for _ in range(3):
            assert cache.get("mnist") is None
            clock.now += 1.0
        assert cache.get("mnist") is not None
    problems = [r for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(problems) == 1 and problems[0].levelno == logging.WARNING
    assert any("readable again" in r.getMessage() for r in caplog.records)


def test_an_expired_lease_is_said_once_per_state(caplog):
    expired = RolloutState(
        "running", 2, 1, 50, False, lease_until=datetime.now(UTC) - timedelta(seconds=1), updated_at=NOW
    )
    clock = Clock()
    cache = RolloutCache(lambda model: expired, refresh_s=1.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="gateway.rollout"):
        for _ in range(4):
            cache.get("mnist")
            clock.now += 1.0
    assert sum("lease ended" in r.getMessage() for r in caplog.records) == 1


def test_the_openapi_document_states_the_rollout_rules():
    from gateway.openapi import openapi_spec
    from gateway.rollout import CLIENT_ID_PATTERN, TEXT_PATTERN
    from gateway.routes.rollouts import MODEL_NAME_PATTERN

    spec = openapi_spec()
    parameters = spec["components"]["parameters"]
    assert parameters["ClientId"]["schema"]["pattern"] == CLIENT_ID_PATTERN
    assert parameters["ModelName"]["schema"]["pattern"] == MODEL_NAME_PATTERN
    fields = spec["components"]["schemas"]["RolloutWrite"]["properties"]
    assert fields["started_by"]["pattern"] == fields["reason"]["pattern"] == TEXT_PATTERN
    assert fields["event"]["properties"]["actor"]["pattern"] == TEXT_PATTERN


# --- records and their counts ----------------------------------------------------------------------------


def test_records_logged_before_rollouts_still_replay_and_new_ones_keep_routing():
    import json
    import uuid

    from gateway.store import PredictionRecord

    new = PredictionRecord(
        id=uuid.uuid1(),
        created_at=NOW,
        filename=None,
        image_sha256="0" * 64,
        input_image=bytes(784),
        digit=5,
        probabilities=[0.1] * 10,
        model_name="mnist",
        model_version=2,
        total_ms=12.5,
        routing="shadow",
        request_id=uuid.uuid1(),
    )
    assert PredictionRecord.from_json_bytes(new.to_json_bytes()) == new
    old = json.loads(new.to_json_bytes())
    del old["routing"], old["request_id"]
    replayed = PredictionRecord.from_json_bytes(json.dumps(old).encode())
    assert (replayed.routing, replayed.request_id, replayed.digit) == (None, None, 5)
    with pytest.raises(ValueError, match="routing"):
        PredictionRecord(
            **{**old, "id": new.id, "created_at": NOW, "input_image": bytes(784), "routing": "x"}
        )


def test_a_shipped_record_counts_once_per_metric():
    import uuid

    from gateway.store import PredictionRecord, stats

    def record(routing, digit, total_ms, version=1, seconds=0):
        return PredictionRecord(
            id=uuid.uuid1(),
            created_at=NOW + timedelta(seconds=seconds),
            filename=None,
            image_sha256="0" * 64,
            input_image=b"",
            digit=digit,
            probabilities=[0.1] * 10,
            model_name="mnist",
            model_version=version,
            total_ms=total_ms,
            routing=routing,
        )

    counts: dict = {}
    for r in (
        record("stable", 3, 4.0),
        record("stable", 3, 4.1, seconds=59),
        record("canary", 5, 900.0, version=2),
        record("shadow", 5, 900.0, version=2),
        record(None, 1, None, seconds=60),  # logged before rollouts: no routing, no latency
    ):
        stats.count_prediction(counts, r)
    minute, next_minute = NOW, NOW + timedelta(minutes=1)
    assert counts == {
        ("mnist", 1, minute, "requests"): 2,
        ("mnist", 1, minute, "routing:stable"): 2,
        ("mnist", 1, minute, "digit:3"): 2,
        ("mnist", 1, minute, stats.latency_bucket(4.0)): 2,
        ("mnist", 2, minute, "requests"): 1,
        ("mnist", 2, minute, "routing:canary"): 1,
        ("mnist", 2, minute, "digit:5"): 2,
        ("mnist", 2, minute, stats.latency_bucket(900.0)): 1,
        ("mnist", 2, minute, "shadow"): 1,
        ("mnist", 2, minute, "routing:shadow"): 1,
        ("mnist", 1, next_minute, "requests"): 1,
        ("mnist", 1, next_minute, "digit:1"): 1,
    }

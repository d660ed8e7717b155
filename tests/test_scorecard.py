"""The scorecard's arithmetic (gateway/scorecard.py) on hand-made counter rows: Wilson intervals against
published values, percentiles from latency buckets, windows over minutes and days, nulls when empty."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from gateway import scorecard
from gateway.store import stats

NOW = datetime(2026, 11, 30, 12, 10, 30, tzinfo=UTC)


# Wilson score intervals at 95 % from Newcombe (1998), "Two-sided confidence intervals for the single
# proportion", Table I, and Brown, Cai & DasGupta (2001).
@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [
        (81, 263, 0.2553, 0.3662),  # Newcombe's example 1
        (15, 148, 0.0624, 0.1605),  # example 2
        (0, 20, 0.0, 0.1611),  # example 3
        (1, 29, 0.0061, 0.1718),  # example 4
        (8, 10, 0.4902, 0.9433),
        (10, 10, 0.7225, 1.0),
    ],
)
def test_wilson_interval_matches_published_values(successes, trials, low, high):
    lo, hi = scorecard.wilson(successes, trials)
    assert (lo, hi) == (pytest.approx(low, abs=6e-5), pytest.approx(high, abs=6e-5))


def test_wilson_without_trials_is_none_and_refuses_impossible_counts():
    assert scorecard.wilson(0, 0) is None
    with pytest.raises(ValueError):
        scorecard.wilson(11, 10)


def test_quantiles_interpolate_inside_the_bucket_that_holds_them():
    assert scorecard.quantile({}, 0.5) is None
    assert scorecard.quantile({"latency_ms:1": 0}, 0.5) is None
    # 100 answers all under 1 ms: spread evenly over (0, 1].
    assert scorecard.quantile({"latency_ms:1": 100}, 0.5) == pytest.approx(0.5)
    # 90 in (1, 1.25], 10 in (4.768, 5.96]: p50 in the first, p99 at 9/10 of the second.
    buckets = {stats.latency_bucket(1.1): 90, stats.latency_bucket(5.5): 10}
    assert buckets == {"latency_ms:1.25": 90, "latency_ms:5.96": 10}
    assert scorecard.quantile(buckets, 0.5) == pytest.approx(1.0 + 0.25 * 50 / 90)
    assert scorecard.quantile(buckets, 0.99) == pytest.approx(4.768 + (5.96 - 4.768) * 9 / 10)
    # Beyond the last bound: the last finite bound, as Prometheus answers.
    assert scorecard.quantile({"latency_ms:inf": 5}, 0.99) == stats.LATENCY_BOUNDS_MS[-1]


def test_window_covers_every_minute_that_overlaps_it():
    window = scorecard.window_for(600, NOW)
    assert window.start == datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert window.minutes() == 11 and window.step_minutes == 1
    assert window.days() == [date(2026, 11, 30)]
    # 60 s just after midnight: the last minute of yesterday and the first of today, two partitions.
    window = scorecard.window_for(60, datetime(2026, 12, 1, 0, 0, 20, tzinfo=UTC))
    assert window.days() == [date(2026, 11, 30), date(2026, 12, 1)]
    assert window.minutes() == 2
    # A week: 8 day partitions, at most MAX_POINTS series points.
    window = scorecard.window_for(scorecard.MAX_WINDOW_S, NOW)
    assert len(window.days()) == 8
    assert len(window.steps()) <= scorecard.MAX_POINTS < window.minutes()


@pytest.mark.parametrize("seconds", [scorecard.MIN_WINDOW_S - 1, scorecard.MAX_WINDOW_S + 1])
def test_window_bounds(seconds):
    with pytest.raises(ValueError):
        scorecard.window_for(seconds, NOW)
    # Just inside is fine.
    scorecard.window_for(seconds + (1 if seconds < scorecard.MIN_WINDOW_S else -1), NOW)


def test_an_empty_window_has_counts_of_zero_and_nulls_for_what_cannot_be_computed():
    window = scorecard.window_for(120, NOW)
    card = scorecard.scorecard("mnist", window, {3: []}, stable_version=3, canary_version=None)
    assert card["window"] == {
        "from": "2026-11-30T12:08:00.000Z",
        "to": "2026-11-30T12:10:30.000Z",
        "seconds": 120,
        "step_seconds": 60,
    }
    [v] = card["versions"]
    assert v["requests"] == v["errors"] == v["shadow"] == 0
    assert v["error_rate"] is None
    assert v["latency_ms"] == {"p50": None, "p99": None}
    assert v["digits"] == [0] * 10
    assert v["agreement"] == {"with_version": None, "compared": 0, "agreed": 0, "rate": None}
    assert v["feedback"] == {
        "labels": 0,
        "correct": 0,
        "accuracy": None,
        "interval": None,
        "confidence": 0.95,
    }
    assert v["confusion"] == [[0] * 10 for _ in range(10)]
    assert [p["minute"] for p in v["series"]] == [
        "2026-11-30T12:08:00.000Z",
        "2026-11-30T12:09:00.000Z",
        "2026-11-30T12:10:00.000Z",
    ]
    assert all(p["p50"] is None and p["requests"] == 0 for p in v["series"])


def rows_at(minute: datetime, counts: dict[str, int]) -> list[scorecard.Row]:
    return [(minute.replace(tzinfo=None), metric, value) for metric, value in counts.items()]  # driver: naive


def test_a_card_adds_up_its_minutes_and_compares_with_stable():
    window = scorecard.window_for(180, NOW)
    m1, m2 = datetime(2026, 11, 30, 12, 8, tzinfo=UTC), datetime(2026, 11, 30, 12, 10, tzinfo=UTC)
    canary = rows_at(
        m1,
        {
            stats.REQUESTS: 8,
            stats.ERRORS: 2,
            stats.routing("canary"): 8,
            stats.digit(7): 8,
            stats.latency_bucket(3.0): 8,
            stats.compared(3): 4,
            stats.agreed(3): 3,
            stats.LABELS: 2,
            stats.CORRECT: 1,
            stats.confusion(7, 7): 1,
            stats.confusion(1, 7): 1,
        },
    ) + rows_at(
        m2,
        {stats.REQUESTS: 2, stats.routing("pinned"): 2, stats.digit(1): 2, stats.latency_bucket(30.0): 2},
    )
    # Outside the window: ignored.
    canary += rows_at(datetime(2026, 11, 30, 12, 6, tzinfo=UTC), {stats.REQUESTS: 1000})
    stable = rows_at(m1, {stats.REQUESTS: 5, stats.SHADOW: 4, stats.compared(4): 4, stats.agreed(4): 3})
    card = scorecard.scorecard("mnist", window, {3: stable, 4: canary}, stable_version=3, canary_version=4)
    assert (card["stable_version"], card["canary_version"]) == (3, 4)
    s, c = card["versions"]
    assert (s["version"], c["version"]) == (3, 4)
    assert s["agreement"] == {"with_version": 4, "compared": 4, "agreed": 3, "rate": 0.75}
    assert c["agreement"] == {"with_version": 3, "compared": 4, "agreed": 3, "rate": 0.75}
    assert s["shadow"] == 4
    assert (c["requests"], c["errors"], c["error_rate"]) == (10, 2, pytest.approx(2 / 12, abs=1e-6))
    assert c["routing"] == {"stable": 0, "canary": 8, "pinned": 2, "shadow": 0}
    assert c["digits"] == [0, 2, 0, 0, 0, 0, 0, 8, 0, 0]
    assert 2.441 < c["latency_ms"]["p50"] <= 3.052 and 28.422 < c["latency_ms"]["p99"] <= 35.527
    fb = c["feedback"]
    assert (fb["labels"], fb["correct"], fb["accuracy"]) == (2, 1, 0.5)
    assert fb["interval"] == [pytest.approx(x, abs=1e-6) for x in scorecard.wilson(1, 2)]
    assert c["confusion"][7][7] == 1 and c["confusion"][1][7] == 1
    assert sum(map(sum, c["confusion"])) == 2
    # 12:07 (the minute that holds 12:07:30), 12:08, 12:09, 12:10.
    assert [(p["requests"], p["errors"], p["labels"], p["correct"]) for p in c["series"]] == [
        (0, 0, 0, 0),
        (8, 2, 2, 1),
        (0, 0, 0, 0),
        (2, 0, 0, 0),
    ]
    assert c["series"][2]["p99"] is None and c["series"][3]["p50"] > 28.422


def test_a_long_window_adds_minutes_into_coarser_steps():
    window = scorecard.window_for(scorecard.MAX_WINDOW_S, NOW)
    step = timedelta(minutes=window.step_minutes)
    rows = rows_at(window.start, {stats.REQUESTS: 1}) + rows_at(window.start + step / 2, {stats.REQUESTS: 2})
    [v] = scorecard.scorecard("mnist", window, {1: rows}, stable_version=None, canary_version=None)[
        "versions"
    ]
    assert v["series"][0]["requests"] == 3 and v["requests"] == 3
    assert len(v["series"]) == len(window.steps())

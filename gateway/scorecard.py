"""The scorecard of a model's versions over a window: pure arithmetic on `version_stats` counter rows.

The store reads the counters (one partition per version and day, gateway/store/stats.py names them); this
module turns them into the JSON of `GET /v1/models/{name}/scorecard`: per version, requests and errors,
routing, latency p50/p99 from the buckets, predicted digits, agreement with another version from shadow
pairs, feedback accuracy with a 95 % Wilson interval, the confusion matrix and a series over time. Null
wherever there is nothing to compute (no requests: no error rate, no labels: no accuracy).

A window covers whole UTC minutes: every minute that overlaps the last `seconds` seconds, so its `from` is
up to a minute earlier than `to - seconds`. The series has one point per minute up to MAX_POINTS points, and
coarser steps (whole minutes) beyond; `window.step_seconds` says which.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from gateway.store import stats

MIN_WINDOW_S = 60
MAX_WINDOW_S = 7 * 86400
DEFAULT_WINDOW_S = 600
MAX_POINTS = 360  # series points per version: a 6-hour window is per minute, a week per 28 minutes
CONFIDENCE = 0.95
_Z = 1.959963984540054  # the standard normal's 97.5th percentile: a two-sided 95 % interval

Row = tuple[datetime, str, int]  # (minute, metric, value) as read from version_stats


@dataclass(frozen=True)
class Window:
    start: datetime  # the first minute counted (UTC)
    end: datetime  # now: the last minute counted is the one `end` falls in
    seconds: int  # as asked
    step_minutes: int  # minutes per series point

    @property
    def last_minute(self) -> datetime:
        return stats.minute_of(self.end)

    def minutes(self) -> int:
        return int((self.last_minute - self.start) / timedelta(minutes=1)) + 1

    def days(self) -> list[date]:
        """The day partitions the window touches, oldest first."""
        first, last = stats.day_of(self.start), stats.day_of(self.last_minute)
        return [first + timedelta(days=i) for i in range((last - first).days + 1)]

    def steps(self) -> list[datetime]:
        step = timedelta(minutes=self.step_minutes)
        return [self.start + i * step for i in range(math.ceil(self.minutes() / self.step_minutes))]


def window_for(seconds: int, now: datetime | None = None) -> Window:
    """The minutes that overlap the `seconds` before `now`."""
    if not MIN_WINDOW_S <= seconds <= MAX_WINDOW_S:
        raise ValueError(f"a window is {MIN_WINDOW_S} to {MAX_WINDOW_S} seconds")
    end = (now or datetime.now(UTC)).astimezone(UTC)
    start = stats.minute_of(end - timedelta(seconds=seconds))
    minutes = int((stats.minute_of(end) - start) / timedelta(minutes=1)) + 1
    return Window(start, end, seconds, max(1, math.ceil(minutes / MAX_POINTS)))


# ------------------------------------------------------------------------------------------ statistics


def wilson(successes: int, trials: int, z: float = _Z) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (None without trials): unlike p +- z*se it stays inside
    [0, 1] and does not collapse to a point at 0 % or 100 %, which is what a canary with few labels shows."""
    if trials <= 0:
        return None
    if not 0 <= successes <= trials:
        raise ValueError("successes must be from 0 to trials")
    p = successes / trials
    z2n = z * z / trials
    center = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / trials + z2n / (4 * trials))
    return max(0.0, center - half), min(1.0, center + half)


def _bound(metric: str) -> float:
    text = metric.removeprefix("latency_ms:")
    return math.inf if text == "inf" else float(text)


def quantile(buckets: dict[str, int], q: float) -> float | None:
    """The q-quantile (0 < q < 1) of latencies counted in `latency_ms:<le>` buckets (non-cumulative), by
    linear interpolation inside the bucket that holds it (as Prometheus' histogram_quantile); the last finite
    bound when it falls in `latency_ms:inf`. None without counts."""
    counted = sorted((_bound(m), n) for m, n in buckets.items() if n > 0)
    total = sum(n for _, n in counted)
    if total == 0:
        return None
    rank = q * total
    below = 0
    for upper, count in counted:
        if below + count >= rank:
            if math.isinf(upper):
                return stats.LATENCY_BOUNDS_MS[-1]
            lower = _previous_bound(upper)
            return lower + (upper - lower) * (rank - below) / count
        below += count
    return min(counted[-1][0], stats.LATENCY_BOUNDS_MS[-1])  # only float rounding gets here


def _previous_bound(upper: float) -> float:
    bounds = stats.LATENCY_BOUNDS_MS
    for i, bound in enumerate(bounds):
        if bound >= upper:
            return bounds[i - 1] if i else 0.0
    return bounds[-1]


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# ------------------------------------------------------------------------------------------ the card


def _as_utc(moment: datetime) -> datetime:
    # The driver reads timestamps as naive UTC datetimes.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def version_card(version: int, rows: Iterable[Row], window: Window, compare_with: int | None) -> dict:
    """One version's scorecard from its counter rows (rows outside the window are ignored)."""
    totals: dict[str, int] = {}
    steps = window.steps()
    per_step: list[dict[str, int]] = [{} for _ in steps]
    step = timedelta(minutes=window.step_minutes)
    last = window.last_minute
    seen, point = None, None  # rows come minute by minute: place each minute once, not each row
    for minute, metric, value in rows:
        if minute != seen:
            seen, at = minute, _as_utc(minute)
            point = per_step[int((at - window.start) / step)] if window.start <= at <= last else None
        if point is None or not value:
            continue
        totals[metric] = totals.get(metric, 0) + value
        point[metric] = point.get(metric, 0) + value

    def total(metric: str, counts: dict[str, int] = totals) -> int:
        return int(counts.get(metric, 0))

    requests, errors = total(stats.REQUESTS), total(stats.ERRORS)
    labels, correct = total(stats.LABELS), total(stats.CORRECT)
    interval = wilson(correct, labels)
    compared = total(stats.compared(compare_with)) if compare_with is not None else 0
    agreed = total(stats.agreed(compare_with)) if compare_with is not None else 0
    return {
        "version": version,
        "requests": requests,
        "errors": errors,
        "error_rate": _rate(errors, requests + errors),
        "shadow": total(stats.SHADOW),
        "routing": {reason: total(stats.routing(reason)) for reason in stats.ROUTING_REASONS},
        "latency_ms": _latency(totals),
        "digits": [total(stats.digit(d)) for d in range(10)],
        "agreement": {
            "with_version": compare_with,
            "compared": compared,
            "agreed": agreed,
            "rate": _rate(agreed, compared),
        },
        "feedback": {
            "labels": labels,
            "correct": correct,
            "accuracy": _rate(correct, labels),
            "interval": None if interval is None else [round(interval[0], 6), round(interval[1], 6)],
            "confidence": CONFIDENCE,
        },
        "confusion": [[total(stats.confusion(label, d)) for d in range(10)] for label in range(10)],
        "series": [
            {
                "minute": iso(at),
                "requests": total(stats.REQUESTS, point),
                "errors": total(stats.ERRORS, point),
                **_latency(point),
                "labels": total(stats.LABELS, point),
                "correct": total(stats.CORRECT, point),
            }
            for at, point in zip(steps, per_step, strict=True)
        ],
    }


def _latency(counts: dict[str, int]) -> dict[str, float | None]:
    buckets = {m: n for m, n in counts.items() if m.startswith("latency_ms:")}
    return {"p50": _ms(quantile(buckets, 0.5)), "p99": _ms(quantile(buckets, 0.99))}


def scorecard(
    model: str,
    window: Window,
    rows_by_version: dict[int, Iterable[Row]],
    *,
    stable_version: int | None,
    canary_version: int | None,
) -> dict:
    """The whole answer: every version in `rows_by_version` (in its order). Each version's agreement is
    with the stable version; the stable version's own is with the canary."""
    versions = []
    for version, rows in rows_by_version.items():
        other = canary_version if version == stable_version else stable_version
        versions.append(version_card(version, rows, window, other if other != version else None))
    return {
        "model": model,
        "window": {
            "from": iso(window.start),
            "to": iso(window.end),
            "seconds": window.seconds,
            "step_seconds": window.step_minutes * 60,
        },
        "stable_version": stable_version,
        "canary_version": canary_version,
        "versions": versions,
    }


def iso(moment: datetime) -> str:
    return _as_utc(moment).isoformat(timespec="milliseconds").replace("+00:00", "Z")

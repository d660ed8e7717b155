"""The names of the per-version, per-minute counters in `version_stats` (migration v003_rollouts.cql).

One place for the naming rule: the store's shipper and the feedback route write these, the scorecard reads
them. A minute is the UTC minute of the prediction (a feedback label counts at its prediction's minute).

- `requests`: answers sent to users by this version (not shadow copies).
- `errors`: user requests routed to this version that the model server failed.
- `shadow`: shadow answers (copies of a request that another version answered).
- `routing:<reason>`: answers by reason: `stable`, `canary`, `pinned`, `shadow`.
- `digit:<d>`: answers (shadow included) that predicted digit d.
- `latency_ms:<le>`: user answers whose total gateway time fell in the bucket with upper bound le ms (not
  cumulative); `latency_ms:inf` last.
- `compared:<v>`, `agreed:<v>`: shadow pairs with version v (both answered the same input), and those that
  gave the same digit; counted on both versions' rows.
- `labels`, `correct`: first feedback labels for this version's answers, and how many matched the answer.
- `confusion:<label>:<digit>`: feedback label (the true digit) against the predicted digit.
"""

from __future__ import annotations

import bisect
from datetime import UTC, date, datetime

ROUTING_REASONS = ("stable", "canary", "pinned", "shadow")
# Bucket upper bounds in ms, about 25 % apart from 1 ms to 10 s: p50 and p99 read from them are within a
# bucket's width of the truth, enough to compare two versions.
LATENCY_BOUNDS_MS: tuple[float, ...] = tuple(
    round(b, 3) for b in (1.0 * 1.25**i for i in range(42)) if b <= 10_000
)

REQUESTS = "requests"
ERRORS = "errors"
SHADOW = "shadow"
LABELS = "labels"
CORRECT = "correct"


def routing(reason: str) -> str:
    if reason not in ROUTING_REASONS:
        raise ValueError(f"unknown routing reason {reason!r}")
    return f"routing:{reason}"


def digit(d: int) -> str:
    return f"digit:{int(d)}"


def latency_bucket(ms: float) -> str:
    """The metric of the bucket that holds `ms`: `latency_ms:<upper bound>`, or `latency_ms:inf`."""
    i = bisect.bisect_left(LATENCY_BOUNDS_MS, ms)
    return "latency_ms:inf" if i == len(LATENCY_BOUNDS_MS) else f"latency_ms:{LATENCY_BOUNDS_MS[i]:g}"


def compared(other_version: int) -> str:
    return f"compared:{int(other_version)}"


def agreed(other_version: int) -> str:
    return f"agreed:{int(other_version)}"


def confusion(label: int, predicted: int) -> str:
    return f"confusion:{int(label)}:{int(predicted)}"


def minute_of(moment: datetime) -> datetime:
    """The UTC minute a moment falls in (the clustering key)."""
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


def day_of(minute: datetime) -> date:
    """The partition's day of a minute."""
    return minute.astimezone(UTC).date()


# (model_name, model_version, minute, metric): one counter of version_stats.
CounterKey = tuple[str, int, datetime, str]


def count_prediction(counts: dict[CounterKey, int], record) -> None:
    """Add one shipped prediction (a gateway/store/records.py PredictionRecord) to `counts`: `requests` or
    `shadow`, its routing, its digit and, for a user's answer, its latency bucket."""
    minute = minute_of(record.created_at)
    key = (record.model_name, record.model_version, minute)

    def add(metric: str) -> None:
        counts[(*key, metric)] = counts.get((*key, metric), 0) + 1

    add(SHADOW if record.routing == "shadow" else REQUESTS)
    if record.routing is not None:  # null: logged before rollouts existed
        add(routing(record.routing))
    add(digit(record.digit))
    if record.routing != "shadow" and record.total_ms is not None:
        add(latency_bucket(record.total_ms))


def feedback_counts(label: int, predicted: int, sign: int = 1) -> dict[str, int]:
    """The counter changes of one feedback label (`sign` -1 takes one back: an operator replaced it)."""
    counts = {LABELS: sign, confusion(label, predicted): sign}
    if int(label) == int(predicted):
        counts[CORRECT] = sign
    return counts

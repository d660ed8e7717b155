"""The rollout's guards: pure functions from a scorecard (GET /v1/models/<name>/scorecard) to a decision.

Each guard compares the canary with the stable version over the scorecard's window and says `pass`, `fail`
or `wait` (not enough data to judge yet), with the numbers behind it. A rollout step advances only while no
guard fails; the first failure rolls the canary back. The defaults (Limits) and why:

- error rate <= stable's + 2 points, over the minutes the canary answered in: the stable version fails well
  under 0.1 % of requests here, so 2 points more is a broken version, not noise (a model-server blip of a few
  requests during a step stays under it once 50 requests are in). Relative, because an outage of the model
  server fails every version alike and is not the canary's fault; with fewer than 50 stable requests in those
  minutes there is nothing to compare with, and 2 % is the limit.
- p99 latency <= stable's p99 x 1.5 + 25 ms: the scorecard reads p99 from buckets 25 % apart, so two equal
  versions can differ by a bucket; the slack covers that and scheduling noise at low rates.
- agreement with stable >= 90 % over >= 50 shadow pairs: two versions that are each >= 99 % accurate disagree
  on at most about 2 % of inputs; 90 % leaves room for sampling noise at 50 pairs while any broken version
  (a shuffled-label model agrees on about 10 %) fails at once.
- feedback accuracy: fails only when the canary's Wilson interval lies wholly below stable's (the canary is
  worse beyond the uncertainty of both), and only once both have >= 100 labels (below that the intervals are
  too wide to say anything: +-5 points at 100 labels and 95 % accuracy).
- error rate and latency are judged once the canary has >= 50 requests (below that one slow or failed request
  moves p99 or the rate by whole percents).

The export's own `metrics.json` gate (`versions.check_quality`, the one `promote` and `canary` use) runs when
the rollout starts and again at the promotion; `metrics_gate` reports it in the same form.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from serving.ops import versions
from serving.ops.errors import QualityGateFailed

PASS, FAIL, WAIT = "pass", "fail", "wait"


@dataclass(frozen=True)
class Limits:
    max_error_rate: float = 0.02
    max_p99_ratio: float = 1.5
    p99_slack_ms: float = 25.0
    min_agreement: float = 0.90
    min_requests: int = 50
    min_compared: int = 50
    min_labels: int = 100


@dataclass(frozen=True)
class Check:
    guard: str  # error_rate | p99_latency | agreement | feedback_accuracy | metrics_json
    status: str  # pass | fail | wait
    summary: str  # one line with the numbers, e.g. "agreement 0.104 < 0.900 (1234 pairs with version 2)"
    numbers: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    checks: tuple[Check, ...]

    @property
    def failed(self) -> Check | None:
        return next((c for c in self.checks if c.status == FAIL), None)

    def as_dict(self) -> dict[str, Any]:
        return {"checks": [asdict(c) for c in self.checks]}

    def summary(self) -> str:
        return "; ".join(f"{c.guard} {c.status}: {c.summary}" for c in self.checks)


def find_version(scorecard: dict[str, Any], version: int | None) -> dict[str, Any] | None:
    if version is None:
        return None
    return next((v for v in scorecard.get("versions") or [] if v.get("version") == version), None)


def evaluate(scorecard: dict[str, Any], *, canary: int, stable: int, limits: Limits) -> Decision:
    """Every guard of the canary against stable, in a fixed order (the first failure is the reason)."""
    canary_row = find_version(scorecard, canary) or {}
    stable_row = find_version(scorecard, stable) or {}
    return Decision(
        (
            error_rate(canary_row, stable_row, limits),
            p99_latency(canary_row, stable_row, limits),
            agreement(canary_row, stable_row, canary=canary, stable=stable, limits=limits),
            feedback_accuracy(canary_row, stable_row, limits),
        )
    )


def _attempts(row: dict[str, Any]) -> tuple[int, int]:
    """(requests, errors) of a version: `requests` counts answers, `errors` the failed ones besides."""
    return int(row.get("requests") or 0), int(row.get("errors") or 0)


def error_rate(canary: dict[str, Any], stable: dict[str, Any], limits: Limits) -> Check:
    """The canary fails when its error rate is over `max_error_rate` above stable's (an outage of the model
    server fails every version alike: that is not the canary's fault). Stable's rate is taken over the
    minutes in which the canary had requests (the scorecard's series), else over the whole window; with
    fewer than `min_requests` stable requests there, the canary is judged against `max_error_rate` alone."""
    answered, failed = _attempts(canary)
    total = answered + failed
    numbers: dict[str, Any] = {"errors": failed, "requests": total, "max": limits.max_error_rate}
    if total < limits.min_requests:
        return Check("error_rate", WAIT, f"{total} < {limits.min_requests} requests", numbers)
    rate = failed / total
    stable_answered, stable_failed = _stable_attempts(canary, stable)
    stable_total = stable_answered + stable_failed
    numbers.update(rate=rate, stable_errors=stable_failed, stable_requests=stable_total)
    if stable_total >= limits.min_requests:
        stable_rate = stable_failed / stable_total
        limit = stable_rate + limits.max_error_rate
        basis = (
            f"limit: stable's {stable_rate:.3f} ({stable_failed} errors in {stable_total} requests) "
            f"+ {limits.max_error_rate:.3f}"
        )
        numbers["stable_rate"] = stable_rate
    else:
        limit = limits.max_error_rate
        basis = (
            f"limit {limit:.3f}: stable has {stable_total} < {limits.min_requests} requests to compare with"
        )
    numbers["limit"] = limit
    ok = rate <= limit
    text = f"{rate:.3f} {'<=' if ok else '>'} {limit:.3f} ({failed} errors in {total} requests); {basis}"
    return Check("error_rate", PASS if ok else FAIL, text, numbers)


def _stable_attempts(canary: dict[str, Any], stable: dict[str, Any]) -> tuple[int, int]:
    """Stable's (requests, errors) over the series points in which the canary had requests; its window's
    totals when either row has no series. A canary that started late in the window is then compared with
    the same minutes: an outage in its minutes counts for both, not diluted by stable's healthy past."""
    canary_series, stable_series = canary.get("series"), stable.get("series")
    if not canary_series or not stable_series:
        return _attempts(stable)
    minutes = {p.get("minute") for p in canary_series if sum(_attempts(p))}
    answered = failed = 0
    for point in stable_series:
        if point.get("minute") in minutes:
            a, f = _attempts(point)
            answered, failed = answered + a, failed + f
    return answered, failed


def _p99(row: dict[str, Any]) -> float | None:
    value = (row.get("latency_ms") or {}).get("p99")
    return float(value) if isinstance(value, int | float) else None


def p99_latency(canary: dict[str, Any], stable: dict[str, Any], limits: Limits) -> Check:
    canary_n, stable_n = sum(_attempts(canary)), sum(_attempts(stable))
    canary_p99, stable_p99 = _p99(canary), _p99(stable)
    numbers: dict[str, Any] = {"canary_p99_ms": canary_p99, "stable_p99_ms": stable_p99}
    if min(canary_n, stable_n) < limits.min_requests or canary_p99 is None or stable_p99 is None:
        text = f"requests canary {canary_n}, stable {stable_n}: need {limits.min_requests} each"
        return Check("p99_latency", WAIT, text, numbers)
    limit = stable_p99 * limits.max_p99_ratio + limits.p99_slack_ms
    numbers["limit_ms"] = limit
    ok = canary_p99 <= limit
    text = (
        f"{canary_p99:g} ms {'<=' if ok else '>'} {limit:g} ms "
        f"(stable {stable_p99:g} ms x {limits.max_p99_ratio:g} + {limits.p99_slack_ms:g} ms)"
    )
    return Check("p99_latency", PASS if ok else FAIL, text, numbers)


def _pairs(
    canary_row: dict[str, Any], stable_row: dict[str, Any], canary: int, stable: int
) -> dict[str, Any]:
    """The shadow pairs of canary and stable. They are counted on both versions' rows (gateway/store/
    stats.py), so either row's `agreement` serves, whichever of them the scorecard compared with the other."""
    for row, other in ((canary_row, stable), (stable_row, canary)):
        pairs = row.get("agreement") or {}
        if pairs.get("with_version") == other:
            return pairs
    return {}


def agreement(
    canary_row: dict[str, Any], stable_row: dict[str, Any], *, canary: int, stable: int, limits: Limits
) -> Check:
    stable_version = stable
    pairs = _pairs(canary_row, stable_row, canary, stable)
    compared, agreed = int(pairs.get("compared") or 0), int(pairs.get("agreed") or 0)
    numbers = {"with_version": stable, "compared": compared, "agreed": agreed}
    if compared < limits.min_compared:
        text = f"{compared} < {limits.min_compared} pairs with version {stable_version}"
        return Check("agreement", WAIT, text, numbers)
    rate = agreed / compared
    numbers.update(rate=rate, min=limits.min_agreement)
    ok = rate >= limits.min_agreement
    text = (
        f"{rate:.3f} {'>=' if ok else '<'} {limits.min_agreement:.3f} "
        f"({agreed} of {compared} pairs with version {stable_version})"
    )
    return Check("agreement", PASS if ok else FAIL, text, numbers)


def _feedback(row: dict[str, Any]) -> tuple[int, float | None, list[float] | None]:
    feedback = row.get("feedback") or {}
    interval = feedback.get("interval")
    usable = (
        isinstance(interval, list)
        and len(interval) == 2
        and all(isinstance(x, int | float) for x in interval)
    )
    accuracy = feedback.get("accuracy")
    return (
        int(feedback.get("labels") or 0),
        float(accuracy) if isinstance(accuracy, int | float) else None,
        [float(x) for x in interval] if usable else None,
    )


def feedback_accuracy(canary: dict[str, Any], stable: dict[str, Any], limits: Limits) -> Check:
    canary_labels, canary_acc, canary_ci = _feedback(canary)
    stable_labels, stable_acc, stable_ci = _feedback(stable)
    numbers: dict[str, Any] = {
        "canary": {"labels": canary_labels, "accuracy": canary_acc, "interval": canary_ci},
        "stable": {"labels": stable_labels, "accuracy": stable_acc, "interval": stable_ci},
    }
    if min(canary_labels, stable_labels) < limits.min_labels or canary_ci is None or stable_ci is None:
        text = f"labels canary {canary_labels}, stable {stable_labels}: need {limits.min_labels} each"
        return Check("feedback_accuracy", WAIT, text, numbers)
    worse = canary_ci[1] < stable_ci[0]
    text = (
        f"canary {canary_acc:.3f} [{canary_ci[0]:.3f}, {canary_ci[1]:.3f}] ({canary_labels} labels) "
        f"{'below' if worse else 'vs'} stable {stable_acc:.3f} [{stable_ci[0]:.3f}, {stable_ci[1]:.3f}] "
        f"({stable_labels} labels)"
    )
    return Check("feedback_accuracy", FAIL if worse else PASS, text, numbers)


def metrics_gate(
    model_dir: Path,
    version: int,
    replaces: int | None,
    *,
    min_accuracy: float,
    force: bool,
    max_drop: float = versions.DEFAULT_MAX_ACCURACY_DROP,
) -> Check:
    """The quality gate `promote` and `canary` apply (`versions.quality_gate`: metrics.json, and against the
    stable version it would replace), as a Check."""
    numbers = {"min": min_accuracy, "max_drop": max_drop, "replaces": replaces, "forced": force}
    try:
        verdict = versions.quality_gate(
            model_dir, version, replaces, min_accuracy=min_accuracy, max_drop=max_drop, force=force
        )
    except QualityGateFailed as failed:
        return Check("metrics_json", FAIL, failed.message, numbers)
    return Check("metrics_json", PASS, verdict, numbers)

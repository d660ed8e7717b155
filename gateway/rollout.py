"""A model's rollout: its state (table `rollouts`, migration v003), its validation, and where a request goes.

`route()` is pure: the same client key, model, state and moment always give the same answer, so every
gateway replica agrees with the others without talking to them. `RolloutCache` is the one place a gateway
reads the state: at most every GATEWAY_ROLLOUT_REFRESH_S per process; a missing, unreadable or expired state
sends everything to stable (logged once, not per request).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta

from gateway.errors import InvalidInput

log = logging.getLogger("gateway.rollout")

STATUSES = ("running", "promoted", "rolled_back", "aborted")
ACTIONS = ("start", "step", "promote", "rollback", "abort", "resume", "set")
MAX_VERSION = 2**63 - 1
MAX_STEP_SECONDS = 7 * 86400
# How far past the gateway's clock `lease_until` may be. A lease is what ends a split whose driver stopped
# renewing it, so a forged or buggy one must not keep a canary live for ever. The driver writes 3 polls ahead
# (at least 10 s), and `mnist-models rollout --poll-seconds` is at most 600: 30 minutes, so an hour leaves as
# much again for the operator's clock running ahead of the gateway's.
MAX_LEASE_S = 3600
MAX_TEXT_CHARS = 128  # started_by, an event's actor
MAX_REASON_CHARS = 2000
MAX_DETAIL_CHARS = 8000  # an event's detail, as JSON
MAX_EVENTS = 20  # events GET answers with
# X-Client-Id: 1-128 printable ASCII characters, no space at either end (HTTP strips those).
CLIENT_ID_PATTERN = r"^[!-~]([ -~]{0,126}[!-~])?$"
MAX_TIMESTAMP_CHARS = 40
# Free text (started_by, reason, an event's actor): no control characters (gateway/openapi.yaml repeats it).
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$"
_TEXT = re.compile(TEXT_PATTERN)
# RFC 3339 (what `format: date-time` means); Python's ISO parser alone takes more (and no leap seconds).
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")


@dataclass(frozen=True)
class RolloutState:
    """One row of `rollouts` (timestamps are UTC-aware; `updated_at` is set by the store on each write)."""

    status: str
    canary_version: int
    stable_version: int
    canary_percent: int
    shadow: bool
    steps: tuple[int, ...] = ()
    step_index: int = 0
    step_seconds: int | None = None
    step_started_at: datetime | None = None
    lease_until: datetime | None = None
    started_by: str | None = None
    started_at: datetime | None = None
    reason: str | None = None
    updated_at: datetime | None = None

    def is_live(self, now: datetime) -> bool:
        """Whether the split applies now: running, with a lease in the future."""
        return self.status == "running" and self.lease_until is not None and now < self.lease_until

    def effective(self, now: datetime) -> Effective:
        if not self.is_live(now):
            return Effective(0, False)
        return Effective(self.canary_percent, self.shadow)

    def to_json(self) -> dict:
        body = {f.name: getattr(self, f.name) for f in fields(self)}
        body["steps"] = list(self.steps)
        for name in ("step_started_at", "lease_until", "started_at", "updated_at"):
            body[name] = iso(body[name])
        return body


@dataclass(frozen=True)
class Effective:
    """What a gateway applies now: the canary's share of unpinned requests, and whether shadows run."""

    canary_percent: int
    shadow: bool


@dataclass(frozen=True)
class Event:
    """A line of a rollout's history (`rollout_events`); `detail` is a JSON object or null."""

    actor: str
    action: str
    detail: dict | None


@dataclass(frozen=True)
class RolloutWrite:
    """A validated `PUT /v1/models/<name>/rollout`: the new state, the lightweight transaction's condition
    (the `updated_at` the writer read; None: only if there is no running rollout) and the event to append."""

    state: RolloutState
    if_updated_at: datetime | None
    event: Event | None


@dataclass(frozen=True)
class Target:
    """What the model server is asked for: a label, or a version."""

    label: str | None = None
    version: int | None = None


@dataclass(frozen=True)
class Route:
    """Where one request goes and why (`stable`, `canary`, `pinned`), which version is expected to answer when
    the rollout names it (for its error counts), and the other version's target when a shadow copy runs."""

    target: Target
    reason: str
    expected_version: int | None = None
    shadow: Target | None = None


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ----------------------------------------------------------------------------------------------- routing


def bucket(client_key: str, model: str, canary_version: int) -> int:
    """0-99, the same for a client, model and canary everywhere (a new canary reshuffles who gets it)."""
    digest = hashlib.blake2b(
        f"{client_key}\x00{model}\x00{canary_version}".encode("utf-8", "surrogatepass"), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big") % 100


def route(
    client_key: str,
    model: str,
    state: RolloutState | None,
    now: datetime,
    *,
    stable: Target,
    pinned: Target | None = None,
) -> Route:
    """Where a request goes. A request that names a label or version (`pinned`) gets it; otherwise, while a
    rollout is live, a sticky hash of its client key sends `canary_percent` % of clients to the canary
    version and the rest to `stable` (the gateway's label); with shadow on, the other one answers a copy."""
    if pinned is not None:
        return Route(pinned, "pinned")
    if state is None:
        return Route(stable, "stable")
    effective = state.effective(now)
    canary = Target(version=state.canary_version)
    if (
        effective.canary_percent > 0
        and bucket(client_key, model, state.canary_version) < effective.canary_percent
    ):
        return Route(canary, "canary", state.canary_version, stable if effective.shadow else None)
    if not state.is_live(now):
        return Route(stable, "stable")
    return Route(stable, "stable", state.stable_version, canary if effective.shadow else None)


# ----------------------------------------------------------------------------------------------- the cache


class RolloutCache:
    """The rollout state of each model this gateway routes, re-read at most every `refresh_s`.

    One reader at a time: a request that finds the state stale reads it while the others keep the previous
    value (only the very first read is waited for). A read that fails counts as "no rollout" until the next
    refresh; the trouble, and an expired lease, are logged once each, not per request.
    """

    def __init__(
        self,
        read: Callable[[str], RolloutState | None],
        refresh_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.read = read
        self.refresh_s = refresh_s
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, RolloutState | None]] = {}
        self._last_problem = ""
        self._expired_logged: tuple | None = None

    def get(self, model: str) -> RolloutState | None:
        entry = self._entries.get(model)
        if entry is not None and self._clock() - entry[0] < self.refresh_s:
            return entry[1]
        if not self._lock.acquire(blocking=entry is None):
            return entry[1]  # another request is reading it now
        try:
            entry = self._entries.get(model)
            if entry is not None and self._clock() - entry[0] < self.refresh_s:
                return entry[1]
            try:
                state = self.read(model)
                self._problem("")
            except Exception as exc:  # Cassandra down, a bad row: all to stable, said once
                state = None
                self._problem(f"the rollout state of {model!r} cannot be read ({exc}); all traffic to stable")
            self._note_expired(model, state)
            self._entries[model] = (self._clock(), state)
            return state
        finally:
            self._lock.release()

    def _problem(self, message: str) -> None:
        if message == self._last_problem:
            return
        if message:
            log.warning("%s", message)
        else:
            log.info("the rollout state is readable again")
        self._last_problem = message

    def _note_expired(self, model: str, state: RolloutState | None) -> None:
        if state is None or state.status != "running" or state.is_live(datetime.now(UTC)):
            return
        key = (model, state.updated_at)
        if key != self._expired_logged:
            self._expired_logged = key
            log.warning(
                "the rollout of %r is running but its lease ended at %s: all traffic to stable",
                model,
                iso(state.lease_until),
            )


# ----------------------------------------------------------------------------------------------- validation

_STATE_KEYS = tuple(f.name for f in fields(RolloutState) if f.name != "updated_at")
_BODY_KEYS = frozenset((*_STATE_KEYS, "if_updated_at", "event"))


def parse_write(body: object, now: datetime | None = None) -> RolloutWrite:
    """Validate a PUT body field by field: a clear 400 naming the field, never a partial write. `now` (the
    gateway's clock by default) is what `lease_until` is bounded from."""
    if not isinstance(body, dict):
        raise InvalidInput("send the whole rollout state as a JSON object")
    missing = sorted(_BODY_KEYS - body.keys())
    if missing:
        raise InvalidInput(f"missing field(s): {', '.join(missing)}")
    unknown = sorted(str(k)[:40] for k in body.keys() - _BODY_KEYS)
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(unknown)}")
    status = body["status"]
    if status not in STATUSES:
        raise InvalidInput(f"'status' must be one of {', '.join(STATUSES)}")
    canary_version = _integer(body, "canary_version", 1, MAX_VERSION)
    stable_version = _integer(body, "stable_version", 1, MAX_VERSION)
    if canary_version == stable_version:
        raise InvalidInput("'canary_version' and 'stable_version' must differ")
    shadow = body["shadow"]
    if not isinstance(shadow, bool):
        raise InvalidInput("'shadow' must be true or false")
    steps = _steps(body["steps"])
    step_index = _integer(body, "step_index", 0, max(len(steps) - 1, 0))
    canary_percent = _integer(body, "canary_percent", 0, 100)
    if status == "running":  # what the split applies is the step it is on (the other statuses apply none)
        if not steps:
            raise InvalidInput("a running rollout needs at least one step in 'steps'")
        if canary_percent != steps[step_index]:
            raise InvalidInput(
                f"a running rollout's 'canary_percent' must be its step's: steps[{step_index}] = "
                f"{steps[step_index]}, not {canary_percent}"
            )
    lease_until = _timestamp(body, "lease_until")
    now = now or datetime.now(UTC)
    if lease_until is not None and lease_until - now > timedelta(seconds=MAX_LEASE_S):
        raise InvalidInput(
            f"'lease_until' must be at most {MAX_LEASE_S} s (an hour) after the gateway's clock "
            f"({iso(now)}); a driver renews its lease while it runs"
        )
    state = RolloutState(
        status=status,
        canary_version=canary_version,
        stable_version=stable_version,
        canary_percent=canary_percent,
        shadow=shadow,
        steps=steps,
        step_index=step_index,
        step_seconds=_integer(body, "step_seconds", 1, MAX_STEP_SECONDS, nullable=True),
        step_started_at=_timestamp(body, "step_started_at"),
        lease_until=lease_until,
        started_by=_text(body, "started_by", MAX_TEXT_CHARS, nullable=True),
        started_at=_timestamp(body, "started_at"),
        reason=_text(body, "reason", MAX_REASON_CHARS, nullable=True),
    )
    return RolloutWrite(state, _timestamp(body, "if_updated_at"), _event(body["event"]))


def _integer(body: Mapping, name: str, low: int, high: int, *, nullable: bool = False) -> int | None:
    value = body[name]
    if value is None and nullable:
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)  # JSON has one number type: 5.0 is the integer 5
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(
            f"'{name}' must be an integer from {low} to {high}{' or null' if nullable else ''}"
        )
    return value


def _steps(value: object) -> tuple[int, ...]:
    rule = "'steps' must be a list of increasing integer percentages from 1 to 100 (at most 100 of them)"
    if not isinstance(value, list) or len(value) > 100:
        raise InvalidInput(rule)
    steps = []
    for item in value:
        if isinstance(item, float) and math.isfinite(item) and item.is_integer():
            item = int(item)
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= 100:
            raise InvalidInput(rule)
        if steps and item <= steps[-1]:
            raise InvalidInput(rule)
        steps.append(item)
    return tuple(steps)


def _text(body: Mapping, name: str, max_chars: int, *, nullable: bool) -> str | None:
    value = body[name]
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= max_chars or not _TEXT.fullmatch(value):
        or_null = " or null" if nullable else ""
        raise InvalidInput(f"'{name}' must be 1-{max_chars} characters, no control characters{or_null}")
    return value


def _timestamp(body: Mapping, name: str) -> datetime | None:
    value = body[name]
    if value is None:
        return None
    rule = f"'{name}' must be an RFC 3339 time with its UTC offset (like 2026-11-30T12:00:00Z) or null"
    if not isinstance(value, str) or len(value) > MAX_TIMESTAMP_CHARS or not _RFC3339.fullmatch(value):
        raise InvalidInput(rule)
    try:
        # Python 3.11 reads at most microseconds and an upper-case Z.
        moment = datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", value).replace("z", "Z"))
    except ValueError:
        raise InvalidInput(rule) from None
    if moment.tzinfo is None:
        raise InvalidInput(rule)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # an offset that carries the moment past year 1 or 9999
        raise InvalidInput(rule) from None


def _event(value: object) -> Event | None:
    rule = (
        '\'event\' must be {"actor": 1-128 characters, no control characters, "action": one of '
        f'{", ".join(ACTIONS)}, "detail": a JSON object of at most {MAX_DETAIL_CHARS} characters or null}}'
    )
    if value is None:  # a write that is no event: the driver renewing its lease every few seconds
        return None
    if not isinstance(value, dict) or set(value) != {"actor", "action", "detail"}:
        raise InvalidInput(rule)
    actor, action, detail = value["actor"], value["action"], value["detail"]
    if not isinstance(actor, str) or not 1 <= len(actor) <= MAX_TEXT_CHARS or not _TEXT.fullmatch(actor):
        raise InvalidInput(rule)
    if action not in ACTIONS:
        raise InvalidInput(rule)
    if detail is not None:
        try:
            encoded = encode_detail(detail) if isinstance(detail, dict) else None
        except (ValueError, RecursionError):  # NaN or infinity, or nesting beyond reason
            encoded = None
        if encoded is None or len(encoded) > MAX_DETAIL_CHARS:
            raise InvalidInput(rule)
    return Event(actor, action, detail)


def encode_detail(detail: dict | None) -> str | None:
    return None if detail is None else json.dumps(detail, separators=(",", ":"), allow_nan=False)

"""`mnist-models rollout`: move traffic to a version step by step while its guards pass, then promote it.

The gateway holds the state (`PUT/GET /v1/models/<name>/rollout`, docs/model-ops.md "Rollout"); this driver
is its only writer besides an operator's `--abort`. Every write names the `updated_at` it last saw, so two
drivers never both run one model's rollout, and an `--abort` elsewhere ends this one at its next write.

While a step is held the driver, every poll interval: reads the scorecard, evaluates the guards, and renews
`lease_until`. The gateway applies the split only while the lease is live, so a driver that dies (SIGKILL, a
lost machine) leaves the traffic all-stable within a lease; `--resume` continues from the stored step.

One mechanism stops the loop: a flag set by SIGINT/SIGTERM (or a failed guard) that the loop reads between
short sleeps; the rollback itself is then an ordinary write from the loop, never from a signal handler.
"""

from __future__ import annotations

import getpass
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serving.ops import guards, model_config, versions
from serving.ops.errors import (
    GatewayError,
    GuardFailed,
    NoRollout,
    OpsError,
    QualityGateFailed,
    RolloutConflict,
    RolloutInterrupted,
)
from serving.ops.gateway_client import GatewayClient
from serving.ops.operations import STABLE, Operator
from serving.ops.steps import check_steps

RUNNING, PROMOTED, ROLLED_BACK, ABORTED = "running", "promoted", "rolled_back", "aborted"
MIN_LEASE_S = 10.0  # the gateway re-reads the state every 2 s (GATEWAY_ROLLOUT_REFRESH_S): several re-reads
LEASE_POLLS = 3  # a lease outlives this many missed renewals
SLEEP_SLICE_S = 0.1  # how soon a signal is noticed while waiting
MAX_REASON_CHARS = 500  # of an unexpected error's text in the stored reason (the gateway takes 2000)

Say = Callable[[str], None]


def actor() -> str:
    """Who is acting, as the events record it: user@host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def stored_state(answer: dict[str, Any]) -> dict[str, Any] | None:
    """The stored rollout in a GET/PUT answer (None when the model never had one)."""
    state = answer.get("state", answer)
    return state if isinstance(state, dict) and state.get("status") else None


def lease_live(state: dict[str, Any], now: float) -> bool:
    until = parse_time(state.get("lease_until"))
    return state.get("status") == RUNNING and until is not None and until > now


def describe(state: dict[str, Any]) -> str:
    steps = state.get("steps") or []
    index = int(state.get("step_index") or 0)
    return (
        f"version {state.get('canary_version')} (stable {state.get('stable_version')}), "
        f"step {index + 1}/{len(steps)} ({state.get('canary_percent')} %)"
    )


@dataclass(frozen=True)
class Plan:
    version: int
    steps: tuple[int, ...]
    step_seconds: int
    shadow: bool


class StopFlag:
    """SIGINT/SIGTERM set a flag (nothing else happens in the handler); the driver polls it."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None

    @contextmanager
    def installed(self) -> Iterator[StopFlag]:
        previous = {s: signal.signal(s, self._set) for s in self.SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _set(self, signum: int, _frame: object) -> None:
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


@dataclass
class Driver:
    gateway: GatewayClient
    operator: Operator
    model_name: str
    model_dir: Path
    limits: guards.Limits
    min_accuracy: float
    max_drop: float = versions.DEFAULT_MAX_ACCURACY_DROP
    force: bool = False
    poll_s: float = 5.0
    window_s: int = 600
    say: Say = print
    progress: Callable[[dict[str, Any], guards.Decision | None, float], None] | None = None
    stop: StopFlag | None = None
    who: str = ""
    clock: Callable[[], float] = time.time
    _last_written: dict[str, Any] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.stop = self.stop or StopFlag()
        self.who = self.who or actor()

    @property
    def lease_s(self) -> float:
        return max(MIN_LEASE_S, LEASE_POLLS * self.poll_s)

    # -- the commands --

    def start(self, plan: Plan) -> dict[str, Any]:
        answer = self.gateway.rollout(self.model_name)
        current = stored_state(answer)
        if current is not None and current["status"] == RUNNING:
            if lease_live(current, self.clock()):
                raise RolloutConflict(
                    f"a rollout of {describe(current)} is running (started by {current.get('started_by')}); "
                    "wait for it, or --abort it"
                )
            raise RolloutConflict(
                f"an interrupted rollout of {describe(current)} is stored: --resume or --abort it first"
            )
        stable = model_config.labels(self.operator.config_file.read(), self.model_name).get(STABLE)
        if stable == plan.version:
            self.say(f"version {plan.version} is already stable; nothing to roll out")
            return current or {}
        gate = guards.metrics_gate(
            self.model_dir,
            plan.version,
            stable,
            min_accuracy=self.min_accuracy,
            force=self.force,
            max_drop=self.max_drop,
        )
        if gate.status == guards.FAIL:
            raise QualityGateFailed(gate.summary)
        self.operator.canary(
            plan.version, min_accuracy=self.min_accuracy, max_drop=self.max_drop, force=self.force
        )
        now = self.clock()
        state = {
            "status": RUNNING,
            "canary_version": plan.version,
            "stable_version": stable,
            "canary_percent": plan.steps[0],
            "shadow": plan.shadow,
            "steps": list(plan.steps),
            "step_index": 0,
            "step_seconds": plan.step_seconds,
            "step_started_at": iso(now),
            "lease_until": iso(now + self.lease_s),
            "started_by": self.who,
            "started_at": iso(now),
            "reason": None,
        }
        if self.stop.signum:  # stopped while the version loaded: nothing is in the gateway yet
            raise RolloutInterrupted(
                f"{self.stop.name} before the rollout started; no traffic moved "
                f"(canary label points at {plan.version})"
            )
        detail = {
            "plan": {"steps": list(plan.steps), "step_seconds": plan.step_seconds, "shadow": plan.shadow},
            "metrics_json": gate.summary,
            "limits": asdict(self.limits),
        }
        stored = self._write(state, current.get("updated_at") if current else None, "start", detail)
        shadow = "on" if plan.shadow else "off"
        self.say(
            f"rollout of version {plan.version} (stable {stable}): steps "
            f"{', '.join(map(str, plan.steps))} %, {plan.step_seconds} s each, shadow {shadow}"
        )
        self.say(f"step 1/{len(plan.steps)}: {plan.steps[0]} % to version {plan.version}")
        return self._drive(stored)

    def resume(self) -> dict[str, Any]:
        current = stored_state(self.gateway.rollout(self.model_name))
        if current is None or current["status"] != RUNNING:
            status = current["status"] if current else "none"
            raise NoRollout(f"no interrupted rollout of {self.model_name} to resume (last status: {status})")
        if lease_live(current, self.clock()):
            raise RolloutConflict(
                f"the rollout of {describe(current)} is still driven (lease until "
                f"{current.get('lease_until')}); resume only once its lease expired, or --abort it"
            )
        # Refused, not rolled back: its lease has lapsed, so the gateway applies no split already, and the
        # record stays as it is for `--status` to show; `--abort` ends it.
        problem = resume_problem(current)
        if problem is not None:
            raise NoRollout(
                f"the stored rollout of {self.model_name} cannot be resumed: {problem}; nothing changed (its "
                "lease has lapsed: the gateway sends all traffic to stable); end it with "
                "`mnist-models rollout --abort`"
            )
        version = int(current["canary_version"])
        self.operator.canary(
            version, min_accuracy=self.min_accuracy, max_drop=self.max_drop, force=self.force
        )
        now = self.clock()
        state = {
            **_state_fields(current),
            "step_started_at": iso(now),
            "lease_until": iso(now + self.lease_s),
        }
        stored = self._write(state, current.get("updated_at"), "resume", {"from": describe(current)})
        self.say(f"resumed the rollout of {describe(stored)}; the step starts over")
        return self._drive(stored)

    # -- the loop --

    def _drive(self, state: dict[str, Any]) -> dict[str, Any]:
        """Run the steps from `state` (stored), then promote. An unexpected error (a bug, an answer of an
        unforeseen shape) rolls back before it propagates, so no crash leaves the split on the canary for
        the rest of the lease. The OpsErrors are each handled where they arise (a guard or a signal rolled
        back, a conflict means someone else owns the rollout, a gateway out of reach lets the lease lapse)."""
        try:
            return self._run_steps(state)
        except OpsError:
            raise
        except BaseException as error:
            if self._last_written.get("status") != RUNNING:
                raise  # ended already (promoted, or rolled back by a failed promotion)
            reason = f"driver error: {type(error).__name__}: {error}"[:MAX_REASON_CHARS]
            self._roll_back(self._last_written, reason, {})
            if self._last_written.get("status") == ROLLED_BACK:  # stored (not beaten by an --abort)
                self.say(
                    f"rolled back {describe(self._last_written)}: {reason}; "
                    f"all traffic to stable {self._last_written.get('stable_version')}"
                )
            raise

    def _run_steps(self, state: dict[str, Any]) -> dict[str, Any]:
        steps = list(state["steps"])
        while True:
            index = int(state["step_index"])
            ends = (parse_time(state["step_started_at"]) or self.clock()) + int(state["step_seconds"])
            decision = self._hold(state, ends)
            state = self._last_written
            if index == len(steps) - 1:
                return self._promote(state, decision)
            now = self.clock()
            nxt = {
                **_state_fields(state),
                "step_index": index + 1,
                "canary_percent": steps[index + 1],
                "step_started_at": iso(now),
                "lease_until": iso(now + self.lease_s),
            }
            state = self._write(nxt, state.get("updated_at"), "step", decision.as_dict())
            self.say(
                f"step {index + 2}/{len(steps)}: {steps[index + 1]} % to version {state['canary_version']}"
                f" (guards: {_passed(decision)})"
            )

    def _hold(self, state: dict[str, Any], ends: float) -> guards.Decision:
        """Hold the step until `ends`, judging and renewing each poll; a failure or a signal rolls back."""
        self._last_written = state
        decision = guards.Decision(())
        problem: GatewayError | None = None
        while True:
            self._stop_if_signalled()
            try:
                decision = self._judge(self._last_written)
                problem = None
            except GatewayError as error:  # a blip is tolerated while the lease still holds the split
                self._tolerate(error)
                problem = error
            failed = decision.failed
            if failed is not None:
                self._roll_back(
                    self._last_written, f"guard {failed.guard} failed: {failed.summary}", decision.as_dict()
                )
                raise GuardFailed(
                    f"rolled back {describe(self._last_written)}: guard {failed.guard} failed: "
                    f"{failed.summary}; "
                    f"all traffic to stable {self._last_written.get('stable_version')}"
                )
            now = self.clock()
            if now >= ends and problem is None:
                return decision
            try:
                renewed = {**_state_fields(self._last_written), "lease_until": iso(now + self.lease_s)}
                self._last_written = self._write(renewed, self._last_written.get("updated_at"), None, None)
            except GatewayError as error:
                self._tolerate(error)
            if self.progress is not None:
                self.progress(self._last_written, decision, max(0.0, ends - now))
            self._pause(min(self.poll_s, max(ends - now, SLEEP_SLICE_S)))

    def _judge(self, state: dict[str, Any]) -> guards.Decision:
        card = self.gateway.scorecard(self.model_name, window_s=self.window_s)
        return guards.evaluate(
            card, canary=int(state["canary_version"]), stable=int(state["stable_version"]), limits=self.limits
        )

    def _tolerate(self, error: GatewayError) -> None:
        """Keep going through a gateway blip while the lease is live; past it the gateway is all-stable."""
        until = parse_time(self._last_written.get("lease_until")) or 0.0
        if self.clock() + self.poll_s >= until:
            raise GatewayError(
                f"{error.message}; the rollout's lease lapses at {self._last_written.get('lease_until')}, "
                "after which the gateway sends everything to stable: --resume or --abort"
            )

    def _stop_if_signalled(self) -> None:
        if self.stop.signum:
            reason = f"interrupted by {self.stop.name} ({self.who})"
            self._roll_back(self._last_written, reason, {"signal": self.stop.name})
            raise RolloutInterrupted(
                f"rolled back {describe(self._last_written)}: {reason}; "
                f"all traffic to stable {self._last_written.get('stable_version')}"
            )

    def _promote(self, state: dict[str, Any], decision: guards.Decision) -> dict[str, Any]:
        """Store `promoted`, then move the label.

        The `promoted` write is the commit point: it names the `updated_at` this driver last wrote, so an
        --abort stored before it makes it conflict and the label never moves, and an --abort after it finds
        the rollout over. Claiming the record first and storing `promoted` after the move would leave the
        whole move (a reload, a version load at worst) as a window in which an abort is stored and then
        undone by the label move. The price of this order: during the move the record says promoted while
        `stable` is still the old version (the split is 0 %, so the old stable answers, as after an abort),
        and a move that fails turns the record into rolled_back."""
        version, stable = int(state["canary_version"]), state.get("stable_version")
        self._stop_if_signalled()
        done = {**_state_fields(state), "status": PROMOTED, "canary_percent": 0, "reason": None}
        try:
            stored = self._write(
                done,
                state.get("updated_at"),
                "promote",
                decision.as_dict(),
                conflict_means=f"version {version} not promoted, stable stays {stable}",
            )
        except GatewayError as error:
            raise GatewayError(
                f"{error.message}; version {version} not promoted (stable stays {stable}) unless the gateway "
                f"stored it anyway: if `rollout --status` says promoted, run `mnist-models promote {version}`"
            ) from None
        try:
            self.operator.promote(
                version, min_accuracy=self.min_accuracy, max_drop=self.max_drop, force=self.force
            )
        except BaseException as error:
            self._promotion_failed(stored, decision, error)
            raise
        self.say(f"promoted version {version}: stable {stable} -> {version}; split back to 0 %")
        return stored

    def _promotion_failed(
        self, stored: dict[str, Any], decision: guards.Decision, error: BaseException
    ) -> None:
        """`promoted` is stored but the label move failed. If `stable` did move (only the history write
        failed), the record is right as it is; otherwise it becomes rolled_back."""
        version, stable = int(stored["canary_version"]), stored.get("stable_version")
        try:
            moved = model_config.labels(self.operator.config_file.read(), self.model_name).get(STABLE)
        except Exception as unreadable:  # whatever the reason, the record is left as it is
            self.say(
                f"the rollout stays stored as promoted, but whether stable moved is unknown (config "
                f"unreadable: {unreadable}): check `mnist-models status`"
            )
            return
        if moved == version:
            return
        message = getattr(error, "message", None) or f"{type(error).__name__}: {error}"
        reason = f"promotion failed: {message}"
        back = {**_state_fields(stored), "status": ROLLED_BACK, "canary_percent": 0, "reason": reason}
        try:
            self._write(back, stored.get("updated_at"), "rollback", {**decision.as_dict(), "reason": reason})
        except OpsError as unstored:
            self.say(
                f"the rollout stays stored as promoted, but stable still points at version {moved}: "
                f"could not store the rollback ({unstored.message})"
            )
            return
        self.say(f"rolled back version {version}: {reason}; stable stays {stable}")

    def _roll_back(self, state: dict[str, Any], reason: str, detail: dict[str, Any]) -> None:
        """Percent 0 at once. If the write fails, the lease lapses soon and the gateway goes all-stable."""
        back = {**_state_fields(state), "status": ROLLED_BACK, "canary_percent": 0, "reason": reason}
        try:
            self._last_written = self._write(
                back, state.get("updated_at"), "rollback", {**detail, "reason": reason}
            )
        except RolloutConflict:
            pass  # someone else (an --abort) already ended it: the split is 0 either way
        except GatewayError as error:
            self.say(
                f"could not store the rollback ({error.message}); the gateway goes all-stable when the "
                f"lease lapses at {state.get('lease_until')}"
            )

    def _write(
        self,
        state: dict[str, Any],
        if_updated_at: str | None,
        action: str | None,
        detail: dict[str, Any] | None,
        *,
        conflict_means: str = "stopping",
    ) -> dict[str, Any]:
        event = None if action is None else {"actor": self.who, "action": action, "detail": detail or {}}
        try:
            answer = self.gateway.put_rollout(
                self.model_name, state, if_updated_at=if_updated_at, event=event
            )
        except RolloutConflict as conflict:
            if action in ("start", "abort", "rollback"):
                raise
            raise self._explain_conflict(conflict, conflict_means) from None
        stored = stored_state(answer) or state
        self._last_written = stored
        return stored

    def _explain_conflict(self, conflict: RolloutConflict, means: str) -> RolloutConflict:
        try:
            now = stored_state(self.gateway.rollout(self.model_name))
        except GatewayError:
            return RolloutConflict(f"{conflict.message}; {means}")
        if now is None:
            return RolloutConflict(f"{conflict.message}; {means}")
        why = now.get("reason") or f"status {now.get('status')}"
        return RolloutConflict(f"the stored rollout changed under this driver ({why}); {means}")

    def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop.signum and time.monotonic() < deadline:
            time.sleep(min(SLEEP_SLICE_S, max(0.0, deadline - time.monotonic())))


def abort(
    gateway: GatewayClient, model_name: str, *, say: Say = print, who: str = ""
) -> dict[str, Any] | None:
    """End the running rollout (driven or interrupted): percent 0, status aborted.

    A driver still running may write between this read and this write: the abort then reads again and
    retries (an abort is meant to win), and the driver notices at its next write (a conflict) and stops. If
    that write was the driver's promotion, the driver moves `stable` next and an abort cannot undo it: that is
    a RolloutConflict naming the way back (`mnist-models rollback`), not a quiet "nothing to abort"."""
    who = who or actor()
    seen: dict[str, Any] | None = None  # the running rollout this abort read, if any
    for attempt in range(_ABORT_ATTEMPTS):
        current = stored_state(gateway.rollout(model_name))
        if current is None or current["status"] != RUNNING:
            return _nothing_to_abort(model_name, current, seen, say)
        seen = current
        try:
            return _abort_once(gateway, model_name, current, who, say)
        except RolloutConflict:
            if attempt == _ABORT_ATTEMPTS - 1:
                raise
    return None


_ABORT_ATTEMPTS = 5  # a driver writes at most once a poll: it cannot win five read-then-write races in a row


def _nothing_to_abort(
    model_name: str, current: dict[str, Any] | None, seen: dict[str, Any] | None, say: Say
) -> None:
    if current is not None and seen is not None and current["status"] == PROMOTED:
        version, stable = seen.get("canary_version"), seen.get("stable_version")
        raise RolloutConflict(
            f"not aborted: the rollout of version {version} (stable {stable}) was promoted meanwhile; "
            f"its driver moves stable to version {current.get('canary_version')} (`mnist-models rollback` "
            "moves it back)"
        )
    last = ""
    if current is not None:
        reason = f": {current['reason']}" if current.get("reason") else ""
        last = f" (the last one, of version {current.get('canary_version')}, was {current['status']}{reason})"
    say(f"no rollout of {model_name} is running{last}; nothing to abort")
    return None


def _abort_once(
    gateway: GatewayClient, model_name: str, current: dict[str, Any], who: str, say: Say
) -> dict[str, Any] | None:
    state = {**_state_fields(current), "status": ABORTED, "canary_percent": 0, "reason": f"aborted by {who}"}
    steps, index = current.get("steps"), current.get("step_index")
    if isinstance(steps, list) and isinstance(index, int) and not 0 <= index < max(len(steps), 1):
        # A record written past the gateway's checks: ended at a step it has, so the gateway takes the write.
        state["step_index"] = min(max(index, 0), max(len(steps) - 1, 0))
    event = {"actor": who, "action": "abort", "detail": {"at": describe(current)}}
    answer = gateway.put_rollout(model_name, state, if_updated_at=current.get("updated_at"), event=event)
    say(f"aborted the rollout of {describe(current)}; all traffic to stable {current.get('stable_version')}")
    return stored_state(answer) or state


STATE_FIELDS = (
    "status",
    "canary_version",
    "stable_version",
    "canary_percent",
    "shadow",
    "steps",
    "step_index",
    "step_seconds",
    "step_started_at",
    "lease_until",
    "started_by",
    "started_at",
    "reason",
)


def resume_problem(state: dict[str, Any]) -> str | None:
    """What makes a stored running rollout impossible to drive on (None: nothing). The gateway checks what
    it stores, but a record written by another client or an older gateway may have steps this driver would
    not plan (check_steps: increasing, ending at 100), a step_index outside them, or a percentage other than
    its step's."""
    steps = state.get("steps")
    if not isinstance(steps, list) or not all(_whole(s) for s in steps):
        return f"steps {steps!r} are not a list of whole percentages"
    try:
        check_steps(steps)
    except ValueError as error:
        return f"steps {steps}: {error}"
    index = state.get("step_index")
    if not _whole(index) or not 0 <= index < len(steps):
        return f"step_index {index!r} is not a step of {steps}"
    if state.get("canary_percent") != steps[index]:
        return f"canary_percent {state.get('canary_percent')!r} is not step {index + 1}'s {steps[index]} %"
    seconds = state.get("step_seconds")
    if not _whole(seconds) or seconds < 1:
        return f"step_seconds {seconds!r} is not a whole number of seconds >= 1"
    canary, stable = state.get("canary_version"), state.get("stable_version")
    if not _whole(canary) or not _whole(stable) or min(canary, stable) < 1 or canary == stable:
        return f"canary_version {canary!r} and stable_version {stable!r} must be two versions"
    return None


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _state_fields(state: dict[str, Any]) -> dict[str, Any]:
    """The writable fields of a stored state (the contract's PUT body, without updated_at)."""
    return {name: state.get(name) for name in STATE_FIELDS}


def _passed(decision: guards.Decision) -> str:
    return ", ".join(f"{c.guard} {c.status}" for c in decision.checks) or "none judged"

"""How `rollout --status` and `scorecard` print: plain text for people (JSON: the gateway's answer)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from serving.ops.guards import Decision
from serving.ops.report import table
from serving.ops.rollout import describe, stored_state


def _num(value: Any, spec: str = "", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _role(card: dict[str, Any], version: int) -> str:
    if version == card.get("stable_version"):
        return "stable"
    if version == card.get("canary_version"):
        return "canary"
    return "-"


def _accuracy(feedback: dict[str, Any] | None) -> str:
    feedback = feedback or {}
    if feedback.get("accuracy") is None:
        return "-"
    interval = feedback.get("interval") or [None, None]
    return f"{feedback['accuracy']:.3f} [{_num(interval[0], '.3f')}, {_num(interval[1], '.3f')}]"


def _agreement(agreement: dict[str, Any] | None) -> str:
    agreement = agreement or {}
    if agreement.get("rate") is None:
        return "-"
    return f"{agreement['rate']:.3f} vs {agreement.get('with_version')} ({agreement.get('compared')} pairs)"


def scorecard_table(card: dict[str, Any]) -> str:
    """The versions side by side: one column per version, one row per measure."""
    rows = card.get("versions") or []
    window = card.get("window") or {}
    head = (
        f"model {card.get('model')}: last {window.get('seconds')} s "
        f"({window.get('from')} .. {window.get('to')})"
    )
    if not rows:
        return head + "\nno predictions in the window"
    measures: list[tuple[str, Any]] = [
        ("role", lambda v: _role(card, v["version"])),
        ("requests", lambda v: str(v.get("requests", 0))),
        ("errors", lambda v: f"{v.get('errors', 0)} ({_num(v.get('error_rate'), '.2%')})"),
        ("shadow answers", lambda v: str(v.get("shadow") or 0)),
        ("latency p50", lambda v: _num((v.get("latency_ms") or {}).get("p50"), "g", " ms")),
        ("latency p99", lambda v: _num((v.get("latency_ms") or {}).get("p99"), "g", " ms")),
        ("agreement", lambda v: _agreement(v.get("agreement"))),
        ("labels", lambda v: str((v.get("feedback") or {}).get("labels") or 0)),
        ("accuracy [95% CI]", lambda v: _accuracy(v.get("feedback"))),
        ("digits 0-9", lambda v: " ".join(str(d) for d in v.get("digits") or []) or "-"),
    ]
    body = table(
        ["VERSION", *(str(v["version"]) for v in rows)],
        [[name, *(render(v) for v in rows)] for name, render in measures],
    )
    return f"{head}\n{body}"


def rollout_status(answer: dict[str, Any]) -> str:
    state = stored_state(answer)
    effective = answer.get("effective") or {}
    if state is None:
        lines = ["no rollout stored for this model; all traffic to stable"]
    else:
        lines = [
            f"rollout of {describe(state)}: {state['status']}",
            f"started {state.get('started_at')} by {state.get('started_by')}; step started "
            f"{state.get('step_started_at')}; lease until {state.get('lease_until')}",
        ]
        if state.get("reason"):
            lines.append(f"reason: {state['reason']}")
    percent = effective.get("canary_percent") or 0
    shadow = "on" if effective.get("shadow") else "off"
    lines.append(f"effective now: {percent} % to canary, shadow {shadow}")
    events = answer.get("events") or []
    if events:
        lines.append("")
        lines.append(
            table(
                ["AT", "ACTOR", "ACTION", "VERSION", "PERCENT", "DETAIL"],
                [
                    [
                        str(e.get("at", "")),
                        str(e.get("actor", "")),
                        str(e.get("action", "")),
                        _num(e.get("canary_version")),
                        _num(e.get("canary_percent")),
                        _short_detail(e.get("detail")),
                    ]
                    for e in events
                ],
            )
        )
    return "\n".join(lines)


def _short_detail(detail: Any, width: int = 90) -> str:
    if isinstance(detail, str):
        with contextlib.suppress(ValueError):
            detail = json.loads(detail)
    if isinstance(detail, dict) and "reason" in detail:
        text = str(detail["reason"])
    elif isinstance(detail, dict) and detail.get("checks"):
        text = "; ".join(f"{c['guard']} {c['status']}" for c in detail["checks"])
    else:
        text = json.dumps(detail, separators=(",", ":")) if detail else ""
    return text if len(text) <= width else text[: width - 1] + "…"


def progress_line(state: dict[str, Any], decision: Decision | None, left_s: float) -> str:
    """The live line on a terminal: where the rollout is, time left in the step, each guard's number."""
    guards = "; ".join(f"{c.guard} {c.status} {c.summary}" for c in (decision.checks if decision else ()))
    return f"{describe(state)}: {left_s:4.0f} s left | {guards}"

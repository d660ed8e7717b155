"""How `list` and `status` print: aligned tables for people, JSON for scripts."""

from __future__ import annotations

import json

from serving.ops.inventory import LabelView, VersionRow
from serving.ops.server import VersionState

ERROR_WIDTH = 80  # a load error can be long; the table shows its start, --json all of it


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _short(text: str) -> str:
    return text if len(text) <= ERROR_WIDTH else text[: ERROR_WIDTH - 1] + "…"


def list_table(rows: list[VersionRow], *, server_reachable: bool) -> str:
    def state(row: VersionRow) -> str:
        if not server_reachable:
            return "?"
        return row.state + (f" ({_short(row.error)})" if row.error else "")

    return table(
        ["VERSION", "TEST ACC", "CREATED", "LOADED", "STATE", "LABELS"],
        [
            [
                str(r.version),
                "-" if r.accuracy is None else f"{r.accuracy:.4f}",
                r.created_at or "-",
                "yes" if r.listed else "no",
                state(r),
                ",".join(r.labels) or "-",
            ]
            for r in rows
        ],
    )


def list_json(model: str, server: str, rows: list[VersionRow], *, server_reachable: bool) -> str:
    return json.dumps(
        {
            "model": model,
            "server": server,
            "server_reachable": server_reachable,
            "versions": [r.as_dict() for r in rows],
        }
    )


def status_table(model: str, server: str, states: dict[int, VersionState], views: list[LabelView]) -> str:
    versions = table(
        ["VERSION", "STATE", "ERROR"],
        [[str(s.version), s.state, _short(s.error_message)] for _, s in sorted(states.items())],
    )
    labels = table(
        ["LABEL", "CONFIG", "SERVER", ""],
        [
            [
                v.label,
                str(v.config_version),
                "-" if v.server_version is None else str(v.server_version),
                "ok" if v.in_sync else "OUT OF SYNC",
            ]
            for v in views
        ],
    )
    return f"model {model} on {server}\n{versions}\n\n{labels}"


def status_json(model: str, server: str, states: dict[int, VersionState], views: list[LabelView]) -> str:
    return json.dumps(
        {
            "model": model,
            "server": server,
            "versions": [
                {
                    "version": s.version,
                    "state": s.state,
                    "error_code": s.error_code,
                    "error_message": s.error_message,
                }
                for _, s in sorted(states.items())
            ],
            "labels": [
                {
                    "label": v.label,
                    "config": v.config_version,
                    "server": v.server_version,
                    "in_sync": v.in_sync,
                }
                for v in views
            ],
        }
    )

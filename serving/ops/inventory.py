"""What `list` and `status` show: versions on disk, in the config and on the server, by version."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from serving.ops import model_config, versions
from serving.ops.model_config import ModelServerConfig
from serving.ops.server import ModelServers, VersionState


@dataclass
class VersionRow:
    version: int
    on_disk: bool = False
    accuracy: float | None = None
    created_at: str = ""
    listed: bool = False  # in the config's specific versions (the server is asked to load it)
    state: str = "-"  # the server's state, "-" when it does not know the version
    error: str = ""
    labels: list[str] = field(default_factory=list)  # from the config file

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def version_rows(
    config: ModelServerConfig,
    model_name: str,
    *,
    model_dir: Path | None,
    states: dict[int, VersionState] | None,
) -> list[VersionRow]:
    rows: dict[int, VersionRow] = {}

    def row(version: int) -> VersionRow:
        return rows.setdefault(version, VersionRow(version))

    if model_dir is not None:
        for disk in versions.scan(model_dir):
            r = row(disk.version)
            r.on_disk, r.accuracy, r.created_at = True, disk.accuracy, disk.created_at
    for version in model_config.versions(config, model_name):
        row(version).listed = True
    for label, version in model_config.labels(config, model_name).items():
        row(version).labels.append(label)
    for version, state in (states or {}).items():
        r = row(version)
        r.state = state.state
        if state.error_code:
            r.error = state.error_message or f"error code {state.error_code}"
    return [rows[v] for v in sorted(rows)]


@dataclass
class LabelView:
    label: str
    config_version: int | None  # where the config file points the label
    server_version: int | None  # what the server resolves it to (None: the server has no such label)

    @property
    def in_sync(self) -> bool:
        return self.config_version == self.server_version


def label_views(config: ModelServerConfig, model_name: str, client: ModelServers) -> list[LabelView]:
    wanted = model_config.labels(config, model_name)
    return [
        LabelView(label, version, client.label_version(model_name, label))
        for label, version in wanted.items()
    ]

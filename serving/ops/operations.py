"""promote / canary / rollback / retire: each one a locked read-change-push cycle on the config file.

Moving a label follows TF Serving's rule that an existing label may only move to an AVAILABLE version:
1. if the target version is not AVAILABLE, add it to the specific versions, write the file, push it
   (HandleReloadConfigRequest) and wait until the server reports it AVAILABLE;
2. point the label at it, write the file, push it.
The file is written before each push, so a server polling the file (--model_config_file_poll_wait_seconds) and
this tool never disagree for long. A version that fails to load is taken out again (file and server), and the
labels never moved. The previous stable version stays loaded, so a rollback is a single label move.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from serving.ops import model_config, versions
from serving.ops.config_file import ConfigFile, History
from serving.ops.errors import ConfigError, LoadFailed, NothingToRollBack, OpsError
from serving.ops.model_config import ModelServerConfig
from serving.ops.server import ModelServers, VersionState

STABLE = "stable"
CANARY = "canary"

Say = Callable[[str], None]
Progress = Callable[[int, VersionState | None, float], None]


@dataclass
class Operator:
    config_file: ConfigFile
    client: ModelServers
    model_name: str
    model_dir: Path
    say: Say = print
    progress: Progress | None = None
    load_timeout_s: float = 300.0

    # -- the commands --

    def promote(
        self,
        version: int,
        *,
        min_accuracy: float,
        force: bool,
        max_drop: float = versions.DEFAULT_MAX_ACCURACY_DROP,
    ) -> None:
        """Point `stable` at `version` (loading it first); the old stable is remembered for rollback."""
        self._point(STABLE, "promote", version, min_accuracy=min_accuracy, force=force, max_drop=max_drop)

    def canary(
        self,
        version: int,
        *,
        min_accuracy: float,
        force: bool,
        max_drop: float = versions.DEFAULT_MAX_ACCURACY_DROP,
    ) -> None:
        """Point `canary` at `version` (loading it first)."""
        self._point(CANARY, "canary", version, min_accuracy=min_accuracy, force=force, max_drop=max_drop)

    def rollback(self) -> None:
        """Point `stable` back where it was before the last promote (no quality gate: it served before)."""
        with self.config_file.locked():
            config = self._read()
            current = model_config.labels(config, self.model_name).get(STABLE)
            history = self.config_file.read_history()
            on_disk = {v.version for v in versions.scan(self.model_dir)}
            gone = []  # deleted since they served: skipped (and dropped from the history if this succeeds)
            target = history.pop_stable(self.model_name, current)
            while target is not None and target not in on_disk:
                gone.append(target)
                target = history.pop_stable(self.model_name, current)
            skipped = f"skipped version(s) {', '.join(map(str, gone))}: no longer on disk" if gone else ""
            if target is None:
                raise NothingToRollBack(
                    f"no earlier stable version of {self.model_name!r} in {self.config_file.history_path}"
                    + (f" ({skipped})" if skipped else "")
                )
            if skipped:
                self.say(skipped)
            self._move_label(config, STABLE, target)
            history.record(self.model_name, "rollback", label=STABLE, previous=current, version=target)
            self._write_history(history, f"{STABLE} moved {_show(current)} -> {target}")
            self.say(f"{STABLE}: {_show(current)} -> {target} (rolled back)")

    def retire(self) -> list[int]:
        """Unload each listed version no label points at, except the newest earlier stable (for rollback)."""
        with self.config_file.locked():
            config = self._read()
            listed = model_config.versions(config, self.model_name)
            keep = set(model_config.labels(config, self.model_name).values())
            history = self.config_file.read_history()
            earlier = history.previous_stable(self.model_name)
            if earlier:
                keep.add(earlier[-1])
            retired = [v for v in listed if v not in keep]
            if not retired:
                self.say("nothing to retire: every loaded version is labelled or the rollback target")
                return []
            new = model_config.with_versions(config, self.model_name, [v for v in listed if v in keep])
            self._apply(new)
            history.record(self.model_name, "retire", versions=retired)
            self._write_history(history, f"retired version(s) {_join(retired)}")
            self.say(f"retired version(s) {', '.join(map(str, retired))}; serving {_join(sorted(keep))}")
            return retired

    # -- the steps --

    def _point(
        self, label: str, action: str, version: int, *, min_accuracy: float, force: bool, max_drop: float
    ) -> None:
        """Move `label` to `version` past the quality gate (against the current stable, the version it would
        replace); only `stable` keeps a rollback history."""
        with self.config_file.locked():
            config = self._read()
            history = self.config_file.read_history()  # before any push: a bad file must change nothing
            labels = model_config.labels(config, self.model_name)
            old = labels.get(label)
            if old == version:
                self.say(f"{label} already points at version {version}; nothing to do")
                return
            self.say(
                versions.quality_gate(
                    self.model_dir,
                    version,
                    labels.get(STABLE),
                    min_accuracy=min_accuracy,
                    max_drop=max_drop,
                    force=force,
                )
            )
            self._move_label(config, label, version)
            rollback = label == STABLE and old is not None
            if rollback:
                history.push_stable(self.model_name, old)
            history.record(self.model_name, action, label=label, previous=old, version=version, forced=force)
            self._write_history(history, f"{label} moved {_show(old)} -> {version}")
            kept = f"; version {old} stays loaded for rollback" if rollback else ""
            self.say(f"{label}: {_show(old)} -> {version}{kept}")

    def _write_history(self, history: History, done: str) -> None:
        """Write the history of a change the config file and the server already have: an error must not
        read as if nothing had happened."""
        try:
            self.config_file.write_history(history)
        except ConfigError as error:
            raise ConfigError(
                f"{done} (config file and server), but the history was not updated: {error.message}"
            ) from None

    def _read(self) -> ModelServerConfig:
        config = self.config_file.read()
        model_config.check(config, self.model_name)
        return config

    def _apply(self, config: ModelServerConfig) -> None:
        """Write the file first (the source of truth), then push; a rejected push restores the old file (and
        the replicas that took the new one get the old one back)."""
        before = self.config_file.read()
        self.config_file.write(config)
        try:
            self.client.reload(config, previous=before)
        except OpsError:
            self.config_file.write(before)
            raise

    def _move_label(self, config: ModelServerConfig, label: str, version: int) -> None:
        config = self._ensure_available(config, version)
        self._apply(model_config.with_label(config, self.model_name, label, version))

    def _ensure_available(self, config: ModelServerConfig, version: int) -> ModelServerConfig:
        """The config with `version` listed and AVAILABLE on the server (pushing a config that lists it)."""
        state = self.client.version_states(self.model_name).get(version)
        listed = model_config.versions(config, self.model_name)
        if state is not None and state.state == "AVAILABLE" and version in listed:
            return config
        if version not in listed:
            loading = model_config.with_versions(config, self.model_name, [*listed, version])
            self._apply(loading)
            self.say(f"loading version {version}: config pushed (versions {_join([*listed, version])})")
            if state is not None and state.failed:
                # Its old error stays until the server tries again, which only the server can tell.
                self.say(
                    f"version {version} failed to load before ({state.error_message or state.error_code}); "
                    f"waiting up to {self.load_timeout_s:g}s for the server to load it again"
                )
        elif state is not None and state.failed:
            raise LoadFailed(
                f"version {version} is listed but failed to load: {state.error_message or state.error_code}"
            )
        else:
            loading = config  # listed but not AVAILABLE yet (still loading, or the server restarted)
            self.say(f"waiting for listed version {version} to load")
        try:
            ready = self.client.wait_available(
                self.model_name,
                version,
                timeout_s=self.load_timeout_s,
                before=state,
                on_poll=(lambda s, t: self.progress(version, s, t)) if self.progress else None,
            )
        except LoadFailed as error:
            if loading is not config:
                self._undo_load(config, error)
            raise
        self.say(f"version {version} is {ready.state}")
        return loading

    def _undo_load(self, config: ModelServerConfig, error: LoadFailed) -> None:
        try:
            self._apply(config)
        except OpsError as undo_error:
            error.message += f"; restoring the previous config also failed: {undo_error.message}"
        else:
            error.message += "; previous config restored"
        error.args = (error.message,)


def _show(version: int | None) -> str:
    return "(unset)" if version is None else str(version)


def _join(numbers: list[int]) -> str:
    return ", ".join(str(n) for n in sorted(set(numbers)))

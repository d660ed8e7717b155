"""Which versions of which models are served: file-system polling, version policies, loading and unloading,
version states and labels.

It mirrors TF Serving's ServerCore + FileSystemStoragePathSource + AspiredVersionsManager with the
availability-preserving policy: a new version is loaded (warmup included) before the one it replaces is
unloaded; a version that fails to load ends in END with an error status and the others keep serving; a
failed version is not retried while it stays aspired (its directory stays and the config keeps wanting it).
Loading and unloading run on one manager thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from serving.local_server.config import ModelConfig, ModelServerConfig, check_reload_request
from serving.local_server.errors import ServingError, failed_precondition, invalid_argument, not_found
from serving.local_server.metrics import ServerMetrics
from training import contract

log = logging.getLogger(__name__)

Loader = Callable[[str, int, Path, ModelConfig], object]
Unloader = Callable[[object], None]


@dataclass
class VersionStatus:
    version: int
    state: str  # START, LOADING, AVAILABLE, UNLOADING, END
    error_code: grpc.StatusCode = grpc.StatusCode.OK
    error_message: str = ""


@dataclass
class _Version:
    status: VersionStatus
    servable: object | None = None


@dataclass
class _Model:
    name: str
    config: ModelConfig | None  # None once the model left the config: everything gets unloaded
    versions: dict[int, _Version] = field(default_factory=dict)
    aspired: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)  # not retried until they leave the aspired set
    paths: dict[int, Path] = field(default_factory=dict)
    polled: bool = False


def version_dirs(base_path: Path) -> dict[int, Path] | None:
    """{version: directory} under ``base_path`` (`training.contract.version_of` decides, as TF Serving does).
    None when the base path does not exist (the last known versions stay aspired, as in TF Serving)."""
    try:
        return contract.version_dirs(base_path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as exc:  # ValueError: a path no file system can name (a NUL in it)
        log.warning("cannot list base path", extra={"path": str(base_path), "error": str(exc)})
        return None


def aspired_versions(config: ModelConfig, on_disk: list[int]) -> set[int]:
    """The versions the model's policy wants served, out of those on disk (sorted ascending)."""
    policy = config.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return set(on_disk)
    if choice == "specific":
        return set(on_disk) & set(policy.specific.versions)
    count = max(policy.latest.num_versions, 1) if choice == "latest" else 1
    return set(on_disk[-count:])


def _will_load(config: ModelConfig, model: _Model | None, version: int) -> bool:
    """Whether `config` makes `version` load: aspired out of the versions on disk, and not failed already."""
    on_disk = version_dirs(Path(config.base_path)) or {}
    failed = model.failed if model is not None else set()
    return version in aspired_versions(config, sorted(on_disk)) and version not in failed


class ModelManager:
    """Thread-safe registry of servables; ``resolve()`` is the hot path of every request."""

    def __init__(
        self,
        *,
        loader: Loader,
        unloader: Unloader | None = None,
        file_system_poll_wait_seconds: float = 1.0,
        allow_version_labels_for_unavailable_models: bool = False,
        metrics: ServerMetrics | None = None,
        new_model_wait_seconds: float = 600.0,
    ) -> None:
        self._loader = loader
        self._unloader = unloader or (lambda servable: None)
        self._poll_seconds = file_system_poll_wait_seconds
        self._allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._metrics = metrics or ServerMetrics()
        self._new_model_wait = new_model_wait_seconds
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._cycle_lock = threading.Lock()  # one poll/load/unload cycle at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._models: dict[str, _Model] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[], None]] = []

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener` (under the manager's lock: it must be quick) whenever a state or label changes."""
        self._listeners.append(listener)

    # ---- lifecycle -------------------------------------------------------------------------------------

    def start(self, config: ModelServerConfig) -> None:
        """Apply the first config, load what it aspires (in this thread), then poll in the background."""
        self._apply_config(config)
        self._cycle()
        self._thread = threading.Thread(target=self._run, name="model-manager", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and unload every version."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._cycle_lock, self._lock:
            for model in self._models.values():
                model.config = None
                model.aspired = set()
        self._run_actions()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._poll_seconds if self._poll_seconds > 0 else None)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._cycle()
            except Exception:  # the poller must survive anything a directory can throw at it
                log.exception("model manager cycle failed")

    # ---- config and labels -----------------------------------------------------------------------------

    def reload_config(self, config: ModelServerConfig, *, labels_may_wait: bool = False) -> str | None:
        """HandleReloadConfigRequest: validate, swap labels and models, wait for models that are new.

        A label that cannot apply yet (its version is not AVAILABLE) refuses the whole config, as in TF
        Serving. With `labels_may_wait` (the config file poller) the models and versions apply anyway and the
        old labels stay: the label error is returned, and the caller applies the config again later, once the
        versions have loaded. None: everything applied."""
        try:
            new_models, waiting = self._apply_config(config, labels_may_wait=labels_may_wait)
        except ServingError:
            self._metrics.config_reloads.labels("error").inc()
            raise
        if waiting is None:
            self._metrics.config_reloads.labels("ok").inc()
        self._wake.set()
        if new_models:
            self._wait_for_models(new_models)
        return waiting

    def _apply_config(
        self, config: ModelServerConfig, *, labels_may_wait: bool = False
    ) -> tuple[set[str], str | None]:
        check_reload_request(config)
        with self._lock:
            labels, waiting = self._checked_labels(config, may_wait=labels_may_wait)
            wanted = {m.name: m for m in config.model_config_list.config}
            new_models = {
                name for name in wanted if name not in self._models or self._models[name].config is None
            }
            for name, model_config in wanted.items():
                entry = self._models.setdefault(name, _Model(name, None))
                entry.config = model_config
                # Forget failures this config no longer wants, now: a cycle may not run before the next config
                # names the version again (a failed promote undone, then retried), which must retry it.
                entry.failed &= aspired_versions(model_config, sorted(entry.paths))
                entry.polled = False if name in new_models else entry.polled
            for name, entry in self._models.items():
                if name not in wanted:
                    entry.config = None
            self._labels = labels
            self._notify()
        if waiting is None:  # else the caller says so, once
            log.info("config applied", extra={"models": sorted(wanted), "labels": labels})
        return new_models, waiting

    def _checked_labels(
        self, config: ModelServerConfig, *, may_wait: bool = False
    ) -> tuple[dict[str, dict[str, int]], str | None]:
        """ServerCore::UpdateModelVersionLabelMap: a label must point at an AVAILABLE version, except that
        with the flag a *new* label (or one left where it is) may point at any version. With `may_wait`, a
        label whose version this config will load (aspired, on disk, not failed) keeps the current labels and
        returns why they wait: (current labels, reason). Any other refused label raises."""
        labels: dict[str, dict[str, int]] = {}
        waiting = None
        for model_config in config.model_config_list.config:
            model = self._models.get(model_config.name)
            for label, version in model_config.version_labels.items():
                current = self._labels.get(model_config.name, {}).get(label)
                allowed = self._allow_unavailable_labels and current in (None, version)
                record = model.versions.get(version) if model else None
                if not allowed and (record is None or record.status.state != "AVAILABLE"):
                    refused = failed_precondition(
                        f"Request to assign label to version {version} of model {model_config.name}, "
                        "which is not currently available for inference"
                    )
                    if not (may_wait and _will_load(model_config, model, version)):
                        raise refused
                    waiting = waiting or refused.message
                labels.setdefault(model_config.name, {})[label] = version
        return (self._labels, waiting) if waiting else (labels, None)

    def _wait_for_models(self, names: set[str]) -> None:
        deadline = time.monotonic() + self._new_model_wait
        with self._changed:
            while not all(self._settled(name) for name in names):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    return
                self._changed.wait(min(remaining, 1.0))
            for name in sorted(names):
                model = self._models[name]
                states = [v.status for v in model.versions.values()]
                if states and not any(s.state == "AVAILABLE" for s in states):
                    failed = next((s for s in states if s.error_code != grpc.StatusCode.OK), None)
                    if failed is not None:
                        raise ServingError(failed.error_code, failed.error_message)

    def _settled(self, name: str) -> bool:
        model = self._models.get(name)
        if model is None or model.config is None:
            return True
        if not model.polled:
            return False
        # An aspired version that is END without having failed (unloaded earlier) is about to be loaded again.
        return all(
            v in model.versions and (model.versions[v].status.state == "AVAILABLE" or v in model.failed)
            for v in model.aspired
        )

    # ---- requests --------------------------------------------------------------------------------------

    def serves(self, name: str) -> bool:
        """Whether `name` is a model of the current config (metrics label only these: names in requests are
        anyone's choice)."""
        with self._lock:
            return name in self._models

    def resolve(self, name: str, *, version: int | None = None, label: str | None = None) -> object:
        """The servable a ModelSpec names (ServerCore::ServableRequestFromModelSpec + manager lookup)."""
        if not name:
            raise invalid_argument("ModelSpec has no name specified.")
        with self._lock:
            if label is not None:
                found = self._labels.get(name, {}).get(label)
                if found is None:
                    raise invalid_argument(f"Unrecognized servable version label: {label}")
                version = found
            model = self._models.get(name)
            if version is not None:
                record = model.versions.get(version) if model else None
                if record is not None and record.status.state == "AVAILABLE":
                    return record.servable
                raise not_found(f"Servable not found for request: Specific({name}, {version})")
            if model is not None:
                available = [v for v, r in model.versions.items() if r.status.state == "AVAILABLE"]
                if available:
                    return model.versions[max(available)].servable
            raise not_found(f"Servable not found for request: Latest({name})")

    def availability(self) -> dict[str, tuple[frozenset[int], dict[str, int]]]:
        """{model: (its AVAILABLE versions, its labels)} for each model of the current config."""
        with self._lock:
            return {
                name: (
                    frozenset(v for v, r in model.versions.items() if r.status.state == "AVAILABLE"),
                    dict(self._labels.get(name, {})),
                )
                for name, model in self._models.items()
                if model.config is not None
            }

    def model_status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """GetModelStatus: every known version, newest first, or the one asked for."""
        with self._lock:
            model = self._models.get(name)
            if version is not None:
                record = model.versions.get(version) if model else None
                if record is None:
                    raise not_found(f"Could not find version {version} of model {name}")
                return [_copy(record.status)]
            if model is None or not model.versions:
                raise not_found(f"Could not find any versions of model {name}")
            return [_copy(model.versions[v].status) for v in sorted(model.versions, reverse=True)]

    def poll_now(self) -> None:
        """One poll/load/unload cycle in the caller's thread (the poller runs one every interval)."""
        self._cycle()

    def _cycle(self) -> None:
        with self._cycle_lock:
            with self._lock:
                targets = [(m.name, m.config) for m in self._models.values()]
            found = {
                name: (version_dirs(Path(cfg.base_path)) if cfg is not None else []) for name, cfg in targets
            }
            with self._lock:
                for name, config in targets:
                    model = self._models[name]
                    if model.config is not config:
                        continue  # replaced meanwhile; the next cycle sees it
                    on_disk = found[name]
                    if on_disk is None:
                        log.warning(
                            "base path does not exist", extra={"model": name, "path": config.base_path}
                        )
                    elif config is None:
                        model.aspired = set()
                    else:
                        if not on_disk:
                            log.warning(
                                "no versions found under base path",
                                extra={"model": name, "path": config.base_path},
                            )
                        model.paths = on_disk
                        model.aspired = aspired_versions(config, sorted(on_disk))
                    model.failed &= model.aspired  # a failure is retried once it is aspired again
                    model.polled = True
                self._changed.notify_all()
            self._run_actions()

    def _run_actions(self) -> None:
        while True:
            with self._lock:
                action = self._next_action()
                if action is None:
                    self._changed.notify_all()
                    return
                kind, model, version = action
                record = model.versions.get(version)
                if kind == "load":
                    record = _Version(VersionStatus(version, "START"))
                    model.versions[version] = record
                    self._set_state(model.name, record, "LOADING")
                    path = model.paths.get(version) or Path(model.config.base_path) / str(version)
                    model_config = model.config
                else:
                    self._set_state(model.name, record, "UNLOADING")
                    servable, record.servable = record.servable, None
                self._changed.notify_all()
            if kind == "load":
                self._load(model, record, path, model_config)
            else:
                self._unload(model, record, servable)

    def _next_action(self) -> tuple[str, _Model, int] | None:
        """AvailabilityPreservingPolicy::GetNextAction, over every model."""
        for model in self._models.values():
            available = {v for v, r in model.versions.items() if r.status.state == "AVAILABLE"}
            unaspired_available = sorted(available - model.aspired)
            has_aspired = bool(model.aspired)
            if unaspired_available and (
                not has_aspired or available & model.aspired or len(unaspired_available) > 1
            ):
                return "unload", model, unaspired_available[0]
            new = [
                v
                for v in model.aspired
                if v not in model.failed
                and (v not in model.versions or model.versions[v].status.state == "END")
            ]
            if new and model.config is not None:
                return "load", model, max(new)
        return None

    def _load(self, model: _Model, record: _Version, path: Path, model_config: ModelConfig) -> None:
        started = time.perf_counter()
        log.info(
            "loading version",
            extra={"model": model.name, "version": record.status.version, "path": str(path)},
        )
        try:
            servable = self._loader(model.name, record.status.version, path, model_config)
        except ServingError as exc:
            self._failed(model, record, exc.code, exc.message)
            return
        except Exception as exc:  # a bad export must never take the server down
            self._failed(model, record, grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}")
            return
        self._metrics.load_seconds.labels(model.name).observe(time.perf_counter() - started)
        with self._lock:
            record.servable = servable
            self._set_state(model.name, record, "AVAILABLE")
            self._changed.notify_all()

    def _failed(self, model: _Model, record: _Version, code: grpc.StatusCode, message: str) -> None:
        log.error(
            "version failed to load",
            extra={
                "model": model.name,
                "version": record.status.version,
                "code": code.name,
                "error": message,
            },
        )
        self._metrics.load_failures.labels(model.name).inc()
        with self._lock:
            record.status.error_code = code
            record.status.error_message = message
            model.failed.add(record.status.version)
            self._set_state(model.name, record, "END")
            self._changed.notify_all()

    def _unload(self, model: _Model, record: _Version, servable: object) -> None:
        try:
            self._unloader(servable)
        except Exception:
            log.exception("unloading failed", extra={"model": model.name, "version": record.status.version})
        with self._lock:
            record.status.error_code = grpc.StatusCode.OK
            record.status.error_message = ""
            self._set_state(model.name, record, "END")
            self._changed.notify_all()
        log.info("version unloaded", extra={"model": model.name, "version": record.status.version})

    def _set_state(self, name: str, record: _Version, state: str) -> None:
        record.status.state = state
        self._metrics.set_state(name, record.status.version, state)
        self._notify()

    def _notify(self) -> None:
        for listener in self._listeners:
            try:
                listener()
            except Exception:  # a listener must not break loading
                log.exception("state listener failed")


def _copy(status: VersionStatus) -> VersionStatus:
    return VersionStatus(status.version, status.state, status.error_code, status.error_message)

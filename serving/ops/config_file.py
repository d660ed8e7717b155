"""The model config file on disk, with its two sidecars: `<file>.lock` (one writer at a time) and
`<file>.history.json` (earlier stable versions, for rollback, and an audit trail of label moves).

Writes are atomic: a temporary file in the same directory, fsync, rename over the target, fsync the directory.
TF Serving (polling the file) and readers see the old or the new config, never a torn one. The directory must
be writable: mount a directory, not a single file (a rename cannot replace a bind-mounted file). A config path
that is a symlink is followed once: the file it points at is the config, with its sidecars beside it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serving.ops import model_config
from serving.ops.errors import ConfigError
from serving.ops.model_config import ModelServerConfig

HISTORY_LIMIT = 50  # events and earlier stable versions kept per model


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` in one rename; keeps the target's permission bits, and its owner when
    running as root (the file is often the server account's, mode 0600/0640, rewritten with sudo). A symlink
    is followed: the file it points at is replaced and the link stays (a rename over the link would replace
    it with a regular file that the server, reading the link's target, never sees)."""
    path = _followed(path)
    old = path.stat() if path.exists() else None
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            if old is not None and os.geteuid() == 0:
                os.fchown(tmp.fileno(), old.st_uid, old.st_gid)  # before fchmod: chown clears setuid bits
            os.fchmod(tmp.fileno(), old.st_mode & 0o7777 if old is not None else 0o644)
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _followed(path: Path) -> Path:
    return Path(os.path.realpath(path)) if path.is_symlink() else path


@dataclass
class History:
    """Per model: `previous_stable` (a stack, newest last) and `events` (what changed, when)."""

    models: dict[str, dict[str, list[Any]]] = field(default_factory=dict)

    def _model(self, name: str) -> dict[str, list[Any]]:
        return self.models.setdefault(name, {"previous_stable": [], "events": []})

    def previous_stable(self, name: str) -> list[int]:
        return list(self._model(name)["previous_stable"])

    def push_stable(self, name: str, version: int) -> None:
        stack = self._model(name)["previous_stable"]
        stack.append(version)
        del stack[:-HISTORY_LIMIT]

    def pop_stable(self, name: str, current: int | None) -> int | None:
        """The most recent earlier stable version that differs from `current`, removed from the stack."""
        stack = self._model(name)["previous_stable"]
        while stack:
            version = stack.pop()
            if version != current:
                return version
        return None

    def record(self, name: str, action: str, **details: Any) -> None:
        events = self._model(name)["events"]
        events.append({"time": datetime.now(UTC).isoformat(timespec="seconds"), "action": action, **details})
        del events[:-HISTORY_LIMIT]

    def events(self, name: str) -> list[dict[str, Any]]:
        return list(self._model(name)["events"])


def _history_problem(data: Any) -> str:
    """What is wrong with the shape of a history file's JSON; "" when nothing is."""
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        return 'no "models" object'
    for name, model in data["models"].items():
        if not isinstance(model, dict):
            return f"models.{name} is not an object"
        stack = model.get("previous_stable", [])
        if not isinstance(stack, list) or not all(type(v) is int for v in stack):
            return f"models.{name}.previous_stable is not a list of versions"
        events = model.get("events", [])
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            return f"models.{name}.events is not a list of objects"
    return ""


class ConfigFile:
    def __init__(self, path: Path) -> None:
        # Behind a symlink, the real file is the config: history and lock go beside it, so operators naming
        # the link and the file share one lock and one history.
        self.path = _followed(Path(path))
        self.history_path = self.path.with_name(self.path.name + ".history.json")
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    def read(self) -> ModelServerConfig:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file {self.path} not found") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"cannot read config file {self.path}: {error}") from None
        return model_config.parse(text, source=str(self.path))

    def write(self, config: ModelServerConfig) -> None:
        self._write(self.path, model_config.to_text(config))

    def read_history(self) -> History:
        try:
            data = json.loads(self.history_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return History()
        except (OSError, ValueError) as error:
            raise ConfigError(f"cannot read history {self.history_path}: {error}") from None
        problem = _history_problem(data)
        if problem:
            raise ConfigError(f"history {self.history_path} is not an mnist-models history file ({problem})")
        for model in data["models"].values():
            model.setdefault("previous_stable", [])
            model.setdefault("events", [])
        return History(models=data["models"])

    def write_history(self, history: History) -> None:
        self._write(self.history_path, json.dumps({"models": history.models}, indent=2) + "\n")

    @contextlib.contextmanager
    def locked(self, *, timeout_s: float = 30.0) -> Iterator[None]:
        """Hold an exclusive lock for a read-change-push cycle, so two operators never interleave."""
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise ConfigError(f"cannot create lock {self.lock_path}: {error.strerror}") from None
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as error:
                    if error.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() >= deadline:
                        raise ConfigError(
                            f"another mnist-models is changing {self.path} (lock held for {timeout_s:g}s)"
                        ) from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _write(self, path: Path, text: str) -> None:
        try:
            write_atomic(path, text.encode("utf-8"))
        except OSError as error:
            raise ConfigError(f"cannot write {path}: {error.strerror or error}") from None

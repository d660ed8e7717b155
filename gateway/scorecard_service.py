"""Which versions a scorecard shows, and a short cache so that refreshing pages cost Cassandra little.

Versions: the one the gateway's label (`MODEL_LABEL`, usually `stable`) serves (`_stable_version`); the
canary of a running rollout; the versions asked for (`?versions=`); the versions the model server has loaded,
newest first; at most MAX_STATS_VERSIONS in all. A model server that does not answer leaves its versions out,
not the scorecard.

Cache: one answer per (window, asked versions), kept a few seconds (longer for long windows: their minutes
change little between refreshes) and computed once however many requests ask at the same moment, so any
number of pages refreshing cost one read per version and day partition per period and process.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from gateway import scorecard
from gateway.errors import GatewayError
from gateway.store.store import MAX_STATS_VERSIONS

log = logging.getLogger("gateway.scorecard")

MIN_CACHE_S = 3.0
MAX_CACHE_S = 60.0
_CACHED_ANSWERS = 64  # distinct (window, versions) answers kept


def cache_seconds(window_s: int) -> float:
    """How long an answer is reused: 3 s up to a 15-minute window, a minute for a week (1/300 of it)."""
    return min(MAX_CACHE_S, max(MIN_CACHE_S, window_s / 300))


class ScorecardService:
    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._answers: dict[tuple, tuple[float, dict]] = {}  # key -> (expires, answer)
        self._computing: dict[tuple, threading.Lock] = {}

    def card(self, svc: Any, window_s: int, asked: tuple[int, ...] = ()) -> dict:
        key = (window_s, asked)
        answer = self._fresh(key)
        if answer is not None:
            return answer
        with self._lock:
            computing = self._computing.setdefault(key, threading.Lock())
        with computing:  # the others asking now wait for this one's answer
            answer = self._fresh(key)
            if answer is None:
                answer = self._compute(svc, window_s, asked)
                with self._lock:
                    self._answers[key] = (self._clock() + cache_seconds(window_s), answer)
                    self._evict()
            with self._lock:
                self._computing.pop(key, None)
        return answer

    def _fresh(self, key: tuple) -> dict | None:
        with self._lock:
            cached = self._answers.get(key)
            return cached[1] if cached is not None and cached[0] > self._clock() else None

    def _evict(self) -> None:
        now = self._clock()
        for key in [k for k, (expires, _) in self._answers.items() if expires <= now]:
            del self._answers[key]
        while len(self._answers) > _CACHED_ANSWERS:
            del self._answers[min(self._answers, key=lambda k: self._answers[k][0])]

    def _compute(self, svc: Any, window_s: int, asked: tuple[int, ...]) -> dict:
        settings = svc.settings
        rollout = svc.store.read_rollout(settings.model_name)
        loaded = sorted(_loaded_versions(svc.model_client), reverse=True)
        seen = svc.metrics.seen_version(settings.model_name, settings.model_label)
        stable = _stable_version(rollout, seen, loaded)
        running = rollout is not None and rollout.status == "running"
        canary = rollout.canary_version if running and rollout.canary_version != stable else None
        versions = list(dict.fromkeys(v for v in (stable, canary, *asked, *loaded) if v is not None))
        versions = versions[:MAX_STATS_VERSIONS]
        window = scorecard.window_for(window_s)
        rows = (
            svc.store.version_stats(settings.model_name, versions, window.start, window.last_minute)
            if versions
            else {}
        )
        return scorecard.scorecard(
            settings.model_name, window, rows, stable_version=stable, canary_version=canary
        )


def _stable_version(rollout: Any, seen: int | None, loaded: list[int]) -> int | None:
    """The version the gateway's label names: the one that last answered the label in this process (it
    follows the label however it moved: a rollout, or `mnist-models promote` or `rollback` long after one
    ended), else, before any answer, the rollout record's stable version (its canary once promoted), else the
    only loaded one. (GetModelStatus cannot say: TF Serving and mnist-serve ignore its label and list every
    version.)"""
    if seen is not None:
        return seen
    if rollout is not None:
        return rollout.canary_version if rollout.status == "promoted" else rollout.stable_version
    return loaded[0] if len(loaded) == 1 else None


def _loaded_versions(model_client: Any) -> list[int]:
    try:
        return [s.version for s in model_client.model_status() if s.state == "AVAILABLE"]
    except GatewayError as exc:
        log.info("the scorecard goes without the model server's versions: %s", exc.message)
        return []

"""Readiness checks for the local stack: ports, HTTP endpoints, and a poll loop with a deadline.

Every check is a plain callable returning True/False (or raising ``NotReady`` with a reason), so the
runner and the tests can combine them without knowing which service they probe.
"""

from __future__ import annotations

import errno
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass


class NotReady(Exception):
    """A check ran and the thing is not ready yet; the message says why (shown when the wait times out)."""


class WaitTimeout(Exception):
    """The deadline passed before the check succeeded."""


class PortBusy(Exception):
    """A port the stack needs is taken by another process."""


@dataclass(frozen=True)
class PortClaim:
    name: str
    host: str
    port: int


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the kernel's choice); for tests and automatic port picking."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port and we could bind it (SO_REUSEADDR, as servers do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def ensure_ports_free(claims: Iterable[PortClaim]) -> None:
    """Refuse to start anything when a port is taken, naming every busy one (and the duplicated ones)."""
    claims = list(claims)
    problems = []
    seen: dict[int, str] = {}
    for claim in claims:
        if claim.port in seen:
            problems.append(f"{claim.name} and {seen[claim.port]} both use port {claim.port}")
            continue
        seen[claim.port] = claim.name
        if not port_free(claim.host, claim.port):
            problems.append(f"{claim.name} port {claim.port} on {claim.host} is already in use")
    if problems:
        raise PortBusy("; ".join(problems))


def tcp_open(host: str, port: int, timeout_s: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


# Local checks never go through HTTP(S)_PROXY from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    """(status, body) of a GET; HTTP error statuses are returned, connection failures raise NotReady."""
    try:
        with _OPENER.open(url, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NotReady(f"{url}: {reason}") from None


def http_ok(url: str, timeout_s: float = 2.0) -> Callable[[], bool]:
    """A check that passes when GET url answers 200."""

    def check() -> bool:
        status, body = http_get(url, timeout_s)
        if status != 200:
            raise NotReady(f"{url} answered {status}: {body[:200].decode(errors='replace')}")
        return True

    return check


def model_available(rest_url: str, model_name: str, timeout_s: float = 2.0) -> Callable[[], bool]:
    """A check that passes when TF Serving's REST status shows a version of the model AVAILABLE."""
    url = f"{rest_url.rstrip('/')}/v1/models/{model_name}"

    def check() -> bool:
        status, body = http_get(url, timeout_s)
        if status != 200:
            raise NotReady(f"{url} answered {status}: {body[:200].decode(errors='replace')}")
        try:
            versions = json.loads(body).get("model_version_status", [])
        except (ValueError, AttributeError):
            raise NotReady(f"{url} answered something that is not a model status") from None
        if any(v.get("state") == "AVAILABLE" for v in versions):
            return True
        states = ", ".join(f"{v.get('version')}: {v.get('state')}" for v in versions) or "no versions"
        raise NotReady(f"model {model_name} not AVAILABLE yet ({states})")

    return check


def wait_for(
    check: Callable[[], bool],
    *,
    what: str,
    timeout_s: float,
    interval_s: float = 0.25,
    alive: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> float:
    """Poll ``check`` until it returns True; return the seconds waited.

    ``alive`` is called before each try and may raise (the runner passes one that raises when the process
    being waited for has died, so a crash is reported at once instead of after the whole timeout).
    """
    start = clock()
    last_reason = "no answer yet"
    while True:
        if alive is not None:
            alive()
        try:
            if check():
                return clock() - start
            last_reason = "check returned False"
        except NotReady as exc:
            last_reason = str(exc)
        if clock() - start >= timeout_s:
            raise WaitTimeout(f"{what} not ready after {timeout_s:.0f} s: {last_reason}")
        time.sleep(interval_s)

"""The tests' one way to wait: poll a condition until it holds, never sleep and hope.

Built on the local runner's `wait_for` (deploy/local/readiness.py), so the stack and its tests share one poll
loop with a deadline. The timeout only bounds a hang: no test asserts how long anything took.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from deploy.local.readiness import NotReady, wait_for

T = TypeVar("T")


def eventually(
    check: Callable[[], T],
    *,
    what: str = "",
    timeout_s: float = 30.0,
    interval_s: float = 0.2,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    alive: Callable[[], None] | None = None,
) -> T:
    """Call `check` until it returns something truthy and return that; `retry_on` errors count as "not yet".

    `alive` runs before each try and may raise (a process under test that died ends the wait at once).
    """
    result: list[T] = []

    def attempt() -> bool:
        try:
            value = check()
        except retry_on as exc:
            raise NotReady(f"{type(exc).__name__}: {exc}") from None
        if not value:
            raise NotReady(f"got {value!r}")
        result.append(value)
        return True

    wait_for(
        attempt,
        what=what or getattr(check, "__name__", "the condition"),
        timeout_s=timeout_s,
        interval_s=interval_s,
        alive=alive,
    )
    return result[0]

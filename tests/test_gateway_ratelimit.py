"""The write routes' rate limit on its own: fixed windows per client, several limits, bounded memory, and
no thread or timer per request (tests/test_gateway_hostile.py drives it over HTTP)."""

from __future__ import annotations

import threading

import pytest

from gateway.ratelimit import FixedWindowLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_window_allows_its_amount_just_under_and_over_then_resets():
    clock = Clock()
    limiter = FixedWindowLimiter("3/minute", clock=clock)
    assert [limiter.hit("a") for _ in range(3)] == [None, None, None]
    breach = limiter.hit("a")
    assert breach is not None and breach.limit == "3 per 1 minute" and breach.retry_after_s == 60
    clock.now += 59.5
    assert limiter.hit("a") is not None  # the window opened at the first hit: still 0.5 s to go
    assert limiter.hit("a").retry_after_s == 1  # rounded up to whole seconds
    clock.now += 0.5
    assert limiter.hit("a") is None  # a new window


def test_each_client_has_its_own_budget():
    limiter = FixedWindowLimiter("1/minute", clock=Clock())
    assert limiter.hit("a") is None
    assert limiter.hit("b") is None
    assert limiter.hit("a") is not None
    assert limiter.hit("b") is not None


def test_several_limits_each_apply_and_the_shortest_window_is_checked_first():
    clock = Clock()
    limiter = FixedWindowLimiter("5/minute;2/second", clock=clock)
    assert limiter.hit("a") is None and limiter.hit("a") is None
    assert limiter.hit("a").limit == "2 per 1 second"
    for _ in range(3):  # the refused one did not count against the minute: three more fit in it
        clock.now += 1
        assert limiter.hit("a") is None
    clock.now += 1
    assert limiter.hit("a").limit == "5 per 1 minute"
    clock.now += 60
    assert limiter.hit("a") is None


def test_windows_that_ended_are_forgotten():
    clock = Clock()
    limiter = FixedWindowLimiter("10/second", clock=clock)
    for i in range(1000):
        limiter.hit(f"client-{i}")
    assert limiter.tracked() == 1000
    clock.now += 1.5
    limiter.hit("someone")
    assert limiter.tracked() == 1


def test_counting_starts_no_thread():
    limiter = FixedWindowLimiter("20000/minute")
    started, me = [], threading.current_thread()

    def start(thread: threading.Thread) -> None:
        if threading.current_thread() is me:  # the session's driver and gRPC pools may start their own
            started.append(thread)
        original(thread)

    original = threading.Thread.start
    threading.Thread.start = start  # type: ignore[method-assign]
    try:
        for i in range(200):
            limiter.hit(f"client-{i % 7}")
    finally:
        threading.Thread.start = original  # type: ignore[method-assign]
    assert started == []


@pytest.mark.parametrize("text", ["", "many", "5/fortnight"])
def test_a_limit_that_does_not_parse_is_refused(text):
    with pytest.raises(ValueError):
        FixedWindowLimiter(text)

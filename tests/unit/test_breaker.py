"""The one circuit breaker, in its background-probe form (Redis) and what exporters read.

The request-probe form (upstream engine, rate limiter) is pinned in tests/integration/test_upstream_engine.py.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.waiting import wait_until_async
from vqaserve.breaker import BreakerOpen, CircuitBreaker

pytestmark = pytest.mark.unit


class Backend:
    def __init__(self) -> None:
        self.up = False
        self.pings = 0

    async def ping(self) -> None:
        self.pings += 1
        if not self.up:
            raise ConnectionError("refused")


async def test_a_background_probe_alone_closes_it_and_requests_never_wait() -> None:
    backend = Backend()
    b = CircuitBreaker(1, 0.05, name="redis", max_reset_s=0.1, probe=backend.ping)
    try:
        b.record_failure("ConnectionError")
        assert (b.state, b.state_number, b.opens) == ("open", 1, 1)
        await wait_until_async(lambda: backend.pings >= 3)  # probes keep failing: still open, still one opening
        assert not b.allow() and b.opens == 1 and b.last_error == "probe: ConnectionError"
        assert b.retry_after() <= 0.1  # the wait doubled from 0.05 but stops at max_reset_s
        b.record_success()  # a call admitted before it opened, finishing late: says nothing newer
        b.record_failure("late")
        assert b.state != "closed" and b.opens == 1
        backend.up = True
        await wait_until_async(lambda: b.state == "closed")
        assert b.allow() and b.failures == 0 and b.snapshot()["state"] == "closed"
        b.record_failure("again")
        assert b.opens == 2
    finally:
        await b.aclose()


async def test_aclose_stops_the_probe() -> None:
    backend = Backend()
    b = CircuitBreaker(1, 0.01, probe=backend.ping)
    b.record_failure("x")
    await wait_until_async(lambda: backend.pings >= 1)
    await b.aclose()
    pings = backend.pings
    await asyncio.sleep(0.05)
    assert backend.pings == pings


def test_snapshot_and_gauge_for_exporters() -> None:
    now = [0.0]
    b = CircuitBreaker(2, 4.0, clock=lambda: now[0])
    b.record_failure("HTTP 503")
    assert b.snapshot() == {"state": "closed", "consecutive_failures": 1, "trips": 0, "retry_after_s": 0.0,
                            "last_error": "HTTP 503"}
    b.record_failure("HTTP 503")
    now[0] = 1.0
    assert b.snapshot()["retry_after_s"] == 3.0 and b.state_number == 1
    now[0] = 4.0
    assert b.state == "half_open" and b.state_number == 2


def test_a_request_probe_that_fails_waits_longer_up_to_the_cap() -> None:
    now = [0.0]
    b = CircuitBreaker(1, 1.0, max_reset_s=3.0, clock=lambda: now[0])
    b.record_failure()
    waits = []
    for _ in range(3):
        now[0] += b.retry_after()
        assert b.allow()
        b.record_failure("probe")
        waits.append(b.retry_after())
    assert waits == [2.0, 3.0, 3.0] and b.opens == 4
    now[0] += 3.0
    assert b.allow()
    b.record_success()
    b.record_failure()
    assert b.retry_after() == 1.0  # closing resets the wait


def test_refuses_a_threshold_below_one() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(0)


# --- guard(): the one way calls go through a breaker ---------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_guard_records_success_failure_and_refuses_while_open() -> None:
    clock = Clock()
    b = CircuitBreaker(2, 10.0, clock=clock)
    with b.guard():
        pass
    assert (b.failures, b.state) == (0, "closed")
    for _ in range(2):
        with pytest.raises(ConnectionError), b.guard():
            raise ConnectionError("refused")
    assert (b.state, b.last_error) == ("open", "ConnectionError")
    with pytest.raises(BreakerOpen) as refused, b.guard():
        raise AssertionError("the body must not run while the breaker is open")
    assert refused.value.retry_after == pytest.approx(10.0)


def test_guard_without_a_verdict_frees_the_half_open_probe() -> None:
    clock = Clock()
    b = CircuitBreaker(1, 10.0, clock=clock)
    with pytest.raises(OSError), b.guard():
        raise OSError("down")
    clock.now = 10.5  # half-open: one probe may go
    with pytest.raises(asyncio.CancelledError), b.guard():
        raise asyncio.CancelledError  # the client left: says nothing about the backend
    assert (b.state, b.failures) == ("half_open", 1)
    with b.guard() as call:  # the probe slot was freed, so this call may probe
        call.abstain()
    with b.guard():
        pass
    assert b.state == "closed"


def test_guard_takes_the_bodys_own_verdict_over_the_exception() -> None:
    b = CircuitBreaker(1, 10.0, clock=Clock())
    with pytest.raises(ValueError), b.guard() as call:  # e.g. the backend answered 400: alive
        call.succeed()
        raise ValueError("the caller's own error")
    assert b.state == "closed"
    with b.guard(failures=()) as call:  # e.g. HTTP 503, no exception raised
        call.fail("HTTP 503")
    assert (b.state, b.last_error) == ("open", "HTTP 503")


def test_guard_gives_no_verdict_for_exceptions_outside_its_failure_kinds() -> None:
    b = CircuitBreaker(1, 10.0, clock=Clock())
    with pytest.raises(KeyError), b.guard(failures=(OSError,)):
        raise KeyError("a bug of the caller, not a sick backend")
    assert (b.state, b.failures) == ("closed", 0)

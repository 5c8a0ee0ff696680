"""Coalescing: one run per key at a time, disconnects do not hurt the others, errors are not kept."""

from __future__ import annotations

import asyncio

import pytest

from vqaserve.cache.coalesce import Coalescer

pytestmark = pytest.mark.unit


class Work:
    def __init__(self, delay: float = 0.05, fail: bool = False) -> None:
        self.runs = 0
        self.cancelled = 0
        self.delay = delay
        self.fail = fail

    async def __call__(self) -> str:
        self.runs += 1
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail:
            raise RuntimeError(f"attempt {self.runs} failed")
        return f"result {self.runs}"


async def test_concurrent_identical_calls_run_once() -> None:
    c: Coalescer[str] = Coalescer()
    work = Work()
    results = await asyncio.gather(*(c.run("k", work) for _ in range(20)))
    assert work.runs == 1
    assert {r for r, _ in results} == {"result 1"}
    assert sum(shared for _, shared in results) == 19 == c.coalesced
    assert not c.in_flight("k")


async def test_different_keys_do_not_coalesce() -> None:
    c: Coalescer[str] = Coalescer()
    work = Work()
    await asyncio.gather(c.run("a", work), c.run("b", work))
    assert work.runs == 2


async def test_a_waiter_that_leaves_does_not_cancel_the_work_for_the_rest() -> None:
    c: Coalescer[str] = Coalescer()
    work = Work(delay=0.1)
    leader = asyncio.create_task(c.run("k", work))
    await asyncio.sleep(0.01)
    follower = asyncio.create_task(c.run("k", work))
    await asyncio.sleep(0.01)
    leader.cancel()  # the first client disconnects
    result, shared = await follower
    assert (result, shared) == ("result 1", True)
    assert work.cancelled == 0 and work.runs == 1
    with pytest.raises(asyncio.CancelledError):
        await leader


async def test_work_is_cancelled_when_every_waiter_has_left() -> None:
    c: Coalescer[str] = Coalescer()
    work = Work(delay=5)
    tasks = [asyncio.create_task(c.run("k", work)) for _ in range(3)]
    await asyncio.sleep(0.01)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0.01)
    assert work.cancelled == 1
    assert not c.in_flight("k")


async def test_an_error_reaches_only_that_attempts_waiters() -> None:
    c: Coalescer[str] = Coalescer()
    work = Work(fail=True)
    results = await asyncio.gather(*(c.run("k", work) for _ in range(5)), return_exceptions=True)
    assert work.runs == 1
    assert all(isinstance(r, RuntimeError) and "attempt 1" in str(r) for r in results)
    work.fail = False
    result, shared = await c.run("k", work)  # the next request starts a fresh attempt
    assert (result, shared) == ("result 2", False)

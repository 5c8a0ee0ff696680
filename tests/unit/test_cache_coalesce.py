"""Coalescing: one run per key at a time, disconnects do not hurt the others, errors are not kept."""

from __future__ import annotations

import asyncio

import pytest

from vqaserve.cache.coalesce import Coalescer

pytestmark = pytest.mark.unit


class Work:
    """Work that finishes only when the test releases it (no timing assumptions on a busy machine)."""

    def __init__(self, fail: bool = False) -> None:
        self.runs = 0
        self.cancelled = 0
        self.fail = fail
        self.release = asyncio.Event()

    async def __call__(self) -> str:
        self.runs += 1
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail:
            raise RuntimeError(f"attempt {self.runs} failed")
        return f"result {self.runs}"


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_concurrent_identical_calls_run_once() -> None:
    c: Coalescer[str] = Coalescer()
    work = Work()
    tasks = [asyncio.create_task(c.run("k", work)) for _ in range(20)]
    await settle()
    work.release.set()
    results = await asyncio.gather(*tasks)
    assert work.runs == 1
    assert {r for r, _ in results} == {"result 1"}
    assert sum(shared for _, shared in results) == 19 == c.coalesced
    assert not c.in_flight("k")


async def test_different_keys_do_not_coalesce() -> None:
    c: Coalescer[str] = Coalescer()
    work = Work()
    work.release.set()
    await asyncio.gather(c.run("a", work), c.run("b", work))
    assert work.runs == 2


async def test_a_waiter_that_leaves_does_not_cancel_the_work_for_the_rest() -> None:
    c: Coalescer[str] = Coalescer()
    work = Work()
    leader = asyncio.create_task(c.run("k", work))
    await settle()
    follower = asyncio.create_task(c.run("k", work))
    await settle()
    leader.cancel()  # the first client disconnects
    await settle()
    work.release.set()
    result, shared = await follower
    assert (result, shared) == ("result 1", True)
    assert work.cancelled == 0 and work.runs == 1
    with pytest.raises(asyncio.CancelledError):
        await leader


async def test_work_is_cancelled_when_every_waiter_has_left() -> None:
    c: Coalescer[str] = Coalescer()
    work = Work()
    tasks = [asyncio.create_task(c.run("k", work)) for _ in range(3)]
    await settle()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await settle()
    assert work.cancelled == 1
    assert not c.in_flight("k")


async def test_an_error_reaches_only_that_attempts_waiters() -> None:
    c: Coalescer[str] = Coalescer()
    work = Work(fail=True)
    work.release.set()
    tasks = [asyncio.create_task(c.run("k", work)) for _ in range(5)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert work.runs == 1
    assert all(isinstance(r, RuntimeError) and "attempt 1" in str(r) for r in results)
    work.fail = False
    result, shared = await c.run("k", work)  # the next request starts a fresh attempt
    assert (result, shared) == ("result 2", False)

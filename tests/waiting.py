"""Waiting in tests: poll a condition until it holds, or fail naming what never happened.

One helper for blocking code and one for async code. The bounds are generous on purpose: this
machine is shared, and a bound here only says "this does not hang", never how fast something is
(speed belongs to the benchmarks).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, what: str = "the condition",
               every: float = 0.05) -> None:
    """Call `predicate` every `every` seconds until it returns something true; AssertionError after
    `timeout` seconds. Exceptions from the predicate propagate (a server that died says so at once)."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not reached within {timeout:g} s")
        time.sleep(every)


async def wait_until_async(predicate: Callable[[], object | Awaitable[object]], timeout: float = 30.0,
                           what: str = "the condition", every: float = 0.01) -> None:
    """`wait_until` for async tests: the event loop keeps running while it waits. The predicate may be
    a coroutine function (an async check, such as one that awaits a health probe)."""
    end = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not reached within {timeout:g} s")
        await asyncio.sleep(every)

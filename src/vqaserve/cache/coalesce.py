"""Request coalescing: concurrent identical misses run the model once.

The first request for a key starts the work as its own task; later identical requests await the
same task. Each waiter awaits it through `asyncio.shield`, so a client that disconnects does not
cancel it for the rest; only when every waiter has gone is the work cancelled (so the engine stops
generating for nobody). An error reaches the waiters of that attempt only: the entry is removed
as soon as the task ends, and the next request starts afresh.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Flight(Generic[T]):
    task: asyncio.Task[T]
    waiters: int = 0


class Coalescer(Generic[T]):
    def __init__(self, on_coalesced: Callable[[], None] | None = None) -> None:
        self._flights: dict[str, _Flight[T]] = {}
        self.on_coalesced = on_coalesced
        self.coalesced = 0

    def in_flight(self, key: str) -> bool:
        return key in self._flights

    async def run(self, key: str, work: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """(result, shared): shared is True when this call waited for another's work."""
        flight, shared = self.flight(key, work)
        return await self.wait(flight), shared

    def flight(self, key: str, work: Callable[[], Awaitable[T]]) -> tuple[_Flight[T], bool]:
        """The flight for `key`, started with `work` unless one is running (then shared is True).
        Synchronous, so a caller that just checked `in_flight` leads the flight it starts."""
        flight = self._flights.get(key)
        if flight is not None:
            self.coalesced += 1
            if self.on_coalesced is not None:
                self.on_coalesced()
            return flight, True
        flight = _Flight(task=asyncio.ensure_future(work()))
        self._flights[key] = flight
        flight.task.add_done_callback(functools.partial(self._forget, key, flight))
        return flight, False

    async def wait(self, flight: _Flight[T]) -> T:
        """The flight's result, as one of its waiters; the last waiter to leave cancels the work."""
        flight.waiters += 1
        try:
            result = await asyncio.shield(flight.task)
        except asyncio.CancelledError:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                flight.task.cancel()  # nobody is left to receive it
            raise
        flight.waiters -= 1
        return result

    def _forget(self, key: str, flight: _Flight[T], _task: object = None) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.task.cancelled():
            flight.task.exception()  # mark retrieved: waiters got it (or nobody was left to)

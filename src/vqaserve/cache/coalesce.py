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
        flight = self._flights.get(key)
        shared = flight is not None
        if flight is None:
            task = asyncio.ensure_future(work())
            flight = _Flight(task=task)
            self._flights[key] = flight
            task.add_done_callback(functools.partial(self._forget, key, flight))
        else:
            self.coalesced += 1
            if self.on_coalesced is not None:
                self.on_coalesced()
        flight.waiters += 1
        try:
            result = await asyncio.shield(flight.task)
        except asyncio.CancelledError:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                flight.task.cancel()  # nobody is left to receive it
            raise
        flight.waiters -= 1
        return result, shared

    def _forget(self, key: str, flight: _Flight[T], _task: object = None) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.task.cancelled():
            flight.task.exception()  # mark retrieved: waiters got it (or nobody was left to)

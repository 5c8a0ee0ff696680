"""Admission, deadlines and cancellation: the rules both Submitters (batching.py, gate.py) follow.

- A request is refused at the door, never after queueing: shutting down -> 503, a deadline that has
  already passed -> 504, no room -> 429 with Retry-After.
- Waiting for anything on a request's behalf (its result, its next stream delta) happens under its
  deadline; when the deadline passes or the client goes away, the request is abandoned (its stop
  signal set, so a running engine stops it) and DeadlineExceeded / the cancellation propagates.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from vqaserve.errors import DeadlineExceeded, Overloaded, ShuttingDown
from vqaserve.types import EngineRequest

log = logging.getLogger(__name__)
T = TypeVar("T")

# (metric, value) -> metrics: "queue_depth", "batch_size", "batch_visual_tokens", "batch_seconds",
# "queue_seconds", "rejected". Both Submitters report the same names (vqaserve.metrics.observe_batch).
BatchObserver = Callable[[str, float], None]


class Admission:
    """The door of a Submitter: `limit` requests may be held at once (VQA_QUEUE_MAX)."""

    def __init__(self, limit: int, holding: str, observer: BatchObserver | None = None) -> None:
        if limit < 1:
            raise ValueError("queue_max must be >= 1 (VQA_QUEUE_MAX)")
        self.limit = limit
        self.holding = holding  # what the held requests are doing, for the 429 message
        self.observer = observer
        self.closed = False
        self.rejected = 0

    def check(self, request: EngineRequest, held: int, retry_after: int) -> None:
        """Raise if `request` may not join the `held` requests already admitted."""
        if self.closed:
            raise ShuttingDown("the server is shutting down; retry on another instance")
        if request.past_deadline():
            request.cancel.set()
            raise DeadlineExceeded()
        if held >= self.limit:
            self.rejected += 1
            self.observe("rejected", 1)
            raise Overloaded(f"the server is busy: {held} requests are already {self.holding} "
                             f"(VQA_QUEUE_MAX={self.limit}); retry after {retry_after} s",
                             retry_after=retry_after)

    def observe(self, metric: str, value: float) -> None:
        if self.observer is not None:
            try:
                self.observer(metric, value)
            except Exception:  # metrics must never break serving
                log.exception("batch observer failed")


async def within_deadline(awaitable: Awaitable[T], request: EngineRequest,
                          abandon: Callable[[], None] | None = None) -> T:
    """Await on the request's behalf; past its deadline or when the caller is cancelled, abandon it
    (default: set its stop signal) first."""
    give_up = abandon or request.cancel.set
    # asyncio.timeout, not wait_for: the awaitable runs in the caller's task. wait_for would run it
    # in a task of its own, and a stream's next chunk read that way leaves httpx/anyio cancel scopes
    # entered in one task and exited in another, so a client that leaves might not close the
    # upstream connection (vLLM would generate on for nobody).
    timer = asyncio.timeout(request.remaining())
    try:
        async with timer:
            return await awaitable
    except TimeoutError:
        if not timer.expired():
            raise  # the awaited work's own timeout, not the request's deadline
        give_up()
        raise DeadlineExceeded() from None
    except asyncio.CancelledError:  # the client went away
        give_up()
        raise

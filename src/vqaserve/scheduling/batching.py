"""Micro-batching with backpressure, deadlines and cancellation, in front of one engine.

Policy (one scheduler task per engine; the engine runs one batch at a time):
- Admission: a bounded queue. When `queue_max` requests already wait, `submit` raises Overloaded
  (429) at once with a Retry-After estimated from recent batch times; nothing waits unboundedly.
- Order: FIFO by arrival across all groups. The oldest waiting request (the head) always goes next,
  so no group and no large request can be passed over forever.
- Batch formation: the head's group (same model/adapter key and GenerationParams.batch_key()) is
  gathered in arrival order up to `max_batch_size` requests and `max_batch_visual_tokens` visual
  tokens. A request that does not fit the token budget is skipped (it keeps its place, so it is the
  head soon), which lets small requests behind a many-image request ride in the same batch instead
  of starving. Incompatible requests never share a batch.
- Waiting: the head waits at most `max_wait_ms` from its arrival for company. With `adaptive_wait`
  the wait is skipped while traffic is serial (the last batch ran alone, nobody queued behind it and
  the previous request arrived more than max_wait ago): at concurrency 1 a wait only adds latency.
- Deadlines: a request whose deadline passes gets DeadlineExceeded (504), leaves the queue (its
  slot is free at once) and its `cancel` event is set so a running engine stops it.
- Disconnects: a cancelled `submit` (the client went away) sets `request.cancel`; the engine's
  stopping criterion sees it. Queued requests that were cancelled never reach the engine.
- Faults: the engine returns one result or error per request, so one error fails one request (the
  engine isolates a failing request itself: engines/base.py). An engine that raises for a whole
  batch instead fails that batch's requests with a 503 and the scheduler goes on.
- Admission and deadlines follow admission.py, the rules the concurrency gate (gate.py) shares.
- Streaming: a stream is a row like any other (same admission, 429, deadline, grouping and batch
  rules). A batch with streaming rows runs as one engine.generate_streams: each streaming row's
  deltas go into a buffer its client reads from (a slow reader never holds the batch), and its
  answer's rest, finish reason and usage close it. A reader that leaves or times out sets its
  row's `cancel`: the engine stops that row only, and the others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vqaserve.errors import EngineFailure, ShuttingDown, VQAError
from vqaserve.scheduling.admission import Admission, BatchObserver, within_deadline
from vqaserve.types import EngineRequest, EngineResult, StreamDelta

if TYPE_CHECKING:
    from vqaserve.engines.base import DeltaSink, Engine
    from vqaserve.settings import BatchSettings

log = logging.getLogger(__name__)
_END = object()  # end-of-stream marker in a stream ticket's buffer


def visual_tokens(request: EngineRequest) -> int:
    return sum(image.visual_tokens for image in request.images)


@dataclass(eq=False)
class _Ticket:
    request: EngineRequest
    group: tuple[object, ...]
    arrived: float
    tokens: int
    future: asyncio.Future[EngineResult]
    buffer: asyncio.Queue[object] | None = None  # set for streams: deltas, an error, then _END
    sent: int = 0  # characters of the answer already in the buffer (streams)
    gap: float = math.inf  # seconds since the previous arrival
    abandoned: bool = False


@dataclass
class _Stats:
    batch_seconds_ema: float = 0.5
    company_expected: bool = False  # recent traffic was concurrent: worth waiting for company
    batches: int = 0
    requests: int = 0
    sizes: list[int] = field(default_factory=list)


class MicroBatcher:
    """The pipeline's Submitter: `await submit(request, model_key)` -> EngineResult, or an error."""

    def __init__(self, engine: Engine, *, max_batch_size: int = 16, max_wait_ms: float = 10.0,
                 queue_max: int = 256, max_batch_visual_tokens: int = 16384,
                 adaptive_wait: bool = True, observer: BatchObserver | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1 (VQA_BATCH_MAX_SIZE)")
        if max_wait_ms < 0 or max_batch_visual_tokens < 1:
            raise ValueError("max_wait_ms must be >= 0 and max_batch_visual_tokens >= 1")
        self.engine = engine
        self.admission = Admission(queue_max, "queued", observer)
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_batch_visual_tokens = max_batch_visual_tokens
        self.adaptive_wait = adaptive_wait
        self.stats = _Stats()
        self._queue: list[_Ticket] = []
        self._running: list[_Ticket] = []  # the batch (or stream) the engine has now
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_arrival = -math.inf

    @classmethod
    def from_settings(cls, engine: Engine, batching: BatchSettings,
                      observer: BatchObserver | None = None) -> MicroBatcher:
        return cls(engine, max_batch_size=batching.max_size, max_wait_ms=batching.max_wait_ms,
                   queue_max=batching.queue_max,
                   max_batch_visual_tokens=batching.max_visual_tokens,
                   adaptive_wait=batching.adaptive_wait, observer=observer)

    # --- public API --------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Requests waiting for the engine (not counting the batch it is running)."""
        return len(self._queue)

    async def submit(self, request: EngineRequest, model_key: str) -> EngineResult:
        ticket = self._admit(request, model_key, stream=False)
        return await within_deadline(ticket.future, request, abandon=lambda: self._abandon(ticket))

    def open_stream(self, request: EngineRequest, model_key: str) -> _StreamReader:
        """Admit a streaming request now (so a full queue is a 429, not a broken stream)."""
        return _StreamReader(self, self._admit(request, model_key, stream=True))

    async def close(self) -> None:
        """Refuse new work, fail what waits, stop the scheduler (the running batch is cancelled)."""
        self.admission.closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for ticket in [*self._queue, *self._running]:
            self._remove(ticket)
            ticket.request.cancel.set()
            self._fail(ticket, ShuttingDown("the server is shutting down; retry on another instance"))
        self._running = []

    # --- admission -----------------------------------------------------------------------------
    def _admit(self, request: EngineRequest, model_key: str, *, stream: bool) -> _Ticket:
        self.admission.check(request, len(self._queue), self._retry_after())
        loop = asyncio.get_running_loop()
        self._ensure_scheduler(loop)
        group: tuple[object, ...] = (model_key, request.adapter, request.params.batch_key())
        now = time.monotonic()
        ticket = _Ticket(request=request, group=group, arrived=now,
                         tokens=visual_tokens(request), future=loop.create_future(),
                         buffer=asyncio.Queue() if stream else None, gap=now - self._last_arrival)
        self._last_arrival = now
        self._queue.append(ticket)
        self._observe("queue_depth", len(self._queue))
        assert self._wake is not None
        self._wake.set()
        return ticket

    def _retry_after(self) -> int:
        batches_ahead = len(self._queue) / self.max_batch_size + 1
        return max(1, math.ceil(self.stats.batch_seconds_ema * batches_ahead))

    def _ensure_scheduler(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._schedule(), name="vqa-batcher")

    def _abandon(self, ticket: _Ticket) -> None:
        ticket.abandoned = True
        ticket.request.cancel.set()
        self._remove(ticket)
        if ticket.future.done() and not ticket.future.cancelled():
            ticket.future.exception()  # mark retrieved: nobody will read it now

    def _remove(self, ticket: _Ticket) -> None:
        if ticket in self._queue:
            self._queue.remove(ticket)
            self._observe("queue_depth", len(self._queue))

    # --- the scheduler -------------------------------------------------------------------------
    async def _schedule(self) -> None:
        assert self._wake is not None
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                head = self._queue[0]
                await self._gather(head)
                if not self._queue:
                    continue
                batch = self._select(self._queue[0].group)[0]
                for ticket in batch:
                    self._remove(ticket)
                self._running = batch
                await self._run_batch(batch)
                self._running = []
            except asyncio.CancelledError:
                raise
            except Exception:  # the scheduler must outlive any one bad batch
                log.exception("batch scheduler error")
                for ticket in self._running:
                    self._fail(ticket, EngineFailure("the engine failed on this request; retry",
                                                     retry_after=1))
                self._running = []

    def _select(self, group: tuple[object, ...]) -> tuple[list[_Ticket], bool]:
        """The head's group in arrival order within the size and visual-token budgets; and whether
        the batch is full (nothing more could join it)."""
        chosen: list[_Ticket] = []
        tokens = 0
        full = False
        for ticket in self._queue:
            if ticket.group != group:
                continue
            if len(chosen) == self.max_batch_size:
                return chosen, True
            if chosen and tokens + ticket.tokens > self.max_batch_visual_tokens:
                full = True  # skipped, keeps its place in the queue
                continue
            chosen.append(ticket)
            tokens += ticket.tokens
        return chosen, full or len(chosen) == self.max_batch_size or tokens >= self.max_batch_visual_tokens

    async def _gather(self, head: _Ticket) -> None:
        """Wait (at most max_wait from the head's arrival) for more requests of the head's group."""
        assert self._wake is not None
        if self.max_batch_size == 1:
            return
        if self.adaptive_wait and not (self.stats.company_expected or head.gap < self.max_wait_s):
            return  # serial traffic: nobody came recently and the last batch ran alone
        until = head.arrived + self.max_wait_s
        while self._queue and self._queue[0] is head and not self._select(head.group)[1]:
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)

    async def _run_batch(self, batch: list[_Ticket]) -> None:
        live = [t for t in batch if not t.request.cancel.is_set()]
        for ticket in batch:
            if ticket not in live:
                self._fail(ticket, EngineFailure("generation was cancelled"))
        if not live:
            return
        self._observe("batch_size", len(live))
        self._observe("batch_visual_tokens", sum(t.tokens for t in live))
        now = time.monotonic()
        for ticket in live:
            self._observe("queue_seconds", now - ticket.arrived)
        started = time.perf_counter()
        results = await self._generate(live)
        seconds = time.perf_counter() - started
        for ticket, result in zip(live, results, strict=True):
            if isinstance(result, BaseException):
                self._fail(ticket, result)
            elif ticket.buffer is not None:
                ticket.buffer.put_nowait(StreamDelta(text=result.text[ticket.sent:],
                                                     finish_reason=result.finish_reason, usage=result.usage,
                                                     confidence=result.confidence, logprobs=result.logprobs))
                ticket.buffer.put_nowait(_END)
            elif not ticket.future.done():
                ticket.future.set_result(result)
        self._record(len(live), seconds)

    @staticmethod
    def _deliver(ticket: _Ticket, text: str) -> None:
        """A streaming row's delta, on the event loop (after its reader left, nobody reads it)."""
        assert ticket.buffer is not None
        ticket.buffer.put_nowait(StreamDelta(text=text))
        ticket.sent += len(text)

    async def _generate(self, batch: list[_Ticket]) -> Sequence[EngineResult | VQAError]:
        """engine.generate(_streams): one result or error per request. An engine that raises for the
        whole batch broke that contract: each of its requests gets the error (logged once)."""
        requests = [t.request for t in batch]
        sinks: list[DeltaSink | None] = [
            None if t.buffer is None else functools.partial(self._deliver, t) for t in batch]
        try:
            if any(sinks):
                results = await self.engine.generate_streams(requests, sinks)
            else:
                results = await self.engine.generate(requests)
            if len(results) != len(requests):
                raise RuntimeError(f"engine returned {len(results)} results for {len(requests)} requests")
            return results
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return [_as_client_error(exc)] * len(requests)

    def _record(self, size: int, seconds: float) -> None:
        s = self.stats
        s.batches += 1
        s.requests += size
        s.sizes.append(size)
        del s.sizes[:-1000]
        s.batch_seconds_ema = 0.8 * s.batch_seconds_ema + 0.2 * seconds
        s.company_expected = size > 1 or bool(self._queue)
        self._observe("batch_seconds", seconds)

    def _observe(self, metric: str, value: float) -> None:
        self.admission.observe(metric, value)

    def _fail(self, ticket: _Ticket, error: BaseException) -> None:
        if ticket.buffer is not None:
            ticket.buffer.put_nowait(error)
            ticket.buffer.put_nowait(_END)
            return
        if ticket.future.done() or ticket.abandoned:
            return
        ticket.future.set_exception(error)



class _StreamReader:
    """The client's side of a stream ticket: deltas from the buffer, under the request deadline."""

    def __init__(self, batcher: MicroBatcher, ticket: _Ticket) -> None:
        self._batcher = batcher
        self._ticket = ticket
        self._finished = False

    def __aiter__(self) -> _StreamReader:
        return self

    async def __anext__(self) -> StreamDelta:
        if self._finished:
            raise StopAsyncIteration
        buffer = self._ticket.buffer
        assert buffer is not None
        if not buffer.empty():  # the usual case under load: no timer, no wait
            item = buffer.get_nowait()
        else:
            item = await within_deadline(buffer.get(), self._ticket.request, abandon=self._leave)
        if item is _END:
            self._finished = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        assert isinstance(item, StreamDelta)
        return item

    async def aclose(self) -> None:
        self._leave()

    def _leave(self) -> None:
        """The reader is gone (finished, disconnected or timed out): stop generating for it."""
        if not self._finished:
            self._finished = True
            self._batcher._abandon(self._ticket)


def _as_client_error(exc: BaseException) -> VQAError:
    if isinstance(exc, VQAError):
        return exc
    log.error("engine failed on a request: %s", type(exc).__name__, exc_info=exc)
    return EngineFailure("the engine failed on this request; retry", retry_after=1)

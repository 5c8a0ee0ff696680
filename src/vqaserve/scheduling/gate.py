"""Admission without micro-batching, for engines that batch by themselves (an upstream vLLM server).

The micro-batcher (batching.py) runs one batch or one stream at a time per engine: right for a model
in this process, wrong for a model server with continuous batching, where holding requests back to
form batches only adds waiting, and one stream at a time would serialize every streaming client.
This gate keeps the batcher's contract (same Submitter seam, bounded admission with 429 +
Retry-After, deadlines, cancellation) but sends each admitted request upstream at once.

Wiring: engines that declare `batches_itself = True` get a ConcurrencyGate instead of a MicroBatcher.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

from vqaserve.errors import VQAError
from vqaserve.scheduling.admission import Admission, BatchObserver, within_deadline
from vqaserve.types import EngineRequest, EngineResult, StreamDelta

if TYPE_CHECKING:
    from vqaserve.engines.base import Engine
    from vqaserve.settings import BatchSettings


class ConcurrencyGate:
    """The pipeline's Submitter for engines that batch themselves: admission and deadlines only."""

    def __init__(self, engine: Engine, max_in_flight: int = 256, observer: BatchObserver | None = None) -> None:
        self.engine = engine
        self.admission = Admission(max_in_flight, "in flight", observer)
        self.in_flight = 0

    @classmethod
    def from_settings(cls, engine: Engine, batching: BatchSettings,
                      observer: BatchObserver | None = None) -> ConcurrencyGate:
        return cls(engine, max_in_flight=batching.queue_max, observer=observer)

    @property
    def depth(self) -> int:
        """Requests admitted and not yet answered (they wait on the model server, not here)."""
        return self.in_flight

    def _admit(self, request: EngineRequest) -> None:
        self.admission.check(request, self.in_flight, retry_after=1)
        self.in_flight += 1
        # The batcher's figures, for a queue of zero wait and batches of one request (the model
        # server forms the real batches): dashboards read the same names whichever engine serves.
        self.admission.observe("queue_depth", self.in_flight)
        self.admission.observe("queue_seconds", 0.0)
        self.admission.observe("batch_size", 1)
        self.admission.observe("batch_visual_tokens", sum(i.visual_tokens for i in request.images))

    def _release(self, started: float) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        self.admission.observe("queue_depth", self.in_flight)
        self.admission.observe("batch_seconds", time.perf_counter() - started)

    async def submit(self, request: EngineRequest, model_key: str) -> EngineResult:
        self._admit(request)
        started = time.perf_counter()
        try:
            (result,) = await within_deadline(self.engine.generate([request]), request)
        finally:
            self._release(started)
        if isinstance(result, VQAError):
            raise result
        return result

    def open_stream(self, request: EngineRequest, model_key: str) -> _GatedStream:
        """Admit now (a full gate is a 429 before any byte is sent), stream concurrently."""
        self._admit(request)
        return _GatedStream(self, request)

    async def close(self) -> None:
        """Refuse new work; in-flight requests end with their upstream calls."""
        self.admission.closed = True


class _GatedStream:
    """The engine's stream under the request's deadline, holding one gate slot until it ends, fails
    or is closed (even unstarted)."""

    def __init__(self, gate: ConcurrencyGate, request: EngineRequest) -> None:
        self.gate = gate
        self.request = request
        self._inner: AsyncGenerator[StreamDelta, None] | None = None
        self._started = time.perf_counter()
        self._released = False

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self.gate._release(self._started)

    def __aiter__(self) -> _GatedStream:
        return self

    async def __anext__(self) -> StreamDelta:
        if self._released:
            raise StopAsyncIteration
        if self._inner is None:
            self._inner = self.gate.engine.stream(self.request)
        try:
            return await within_deadline(self._inner.__anext__(), self.request)
        except BaseException:  # end, error, deadline or cancellation: the slot is free again
            self._release()
            raise

    async def aclose(self) -> None:
        self._release()
        if self._inner is not None:
            await self._inner.aclose()

    def __del__(self) -> None:  # a stream dropped without being closed must not leak its slot
        self._release()

"""Admission without micro-batching, for engines that batch by themselves (an upstream vLLM server).

The micro-batcher (batching.py) runs one batch or one stream at a time per engine: right for a model
in this process, wrong for a model server with continuous batching, where holding requests back to
form batches only adds waiting, and one stream at a time would serialize every streaming client.
This gate keeps the batcher's contract (same Submitter seam, bounded admission with 429 +
Retry-After, deadlines, cancellation) but sends each admitted request upstream at once.

Wiring: engines that declare `batches_itself = True` get a ConcurrencyGate instead of a MicroBatcher.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from vqaserve.errors import DeadlineExceeded, Overloaded, VQAError
from vqaserve.types import EngineRequest, EngineResult, StreamDelta

if TYPE_CHECKING:
    from vqaserve.engines.base import Engine
    from vqaserve.settings import BatchSettings


class ConcurrencyGate:
    def __init__(self, engine: Engine, max_in_flight: int = 256) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1 (VQA_QUEUE_MAX)")
        self.engine = engine
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.rejected = 0

    @classmethod
    def from_settings(cls, engine: Engine, batching: BatchSettings) -> ConcurrencyGate:
        return cls(engine, max_in_flight=batching.queue_max)

    def depth(self) -> int:
        return self.in_flight

    def _admit(self) -> None:
        if self.in_flight >= self.max_in_flight:
            self.rejected += 1
            raise Overloaded(f"too many requests in flight ({self.max_in_flight}); retry shortly or raise "
                             "VQA_QUEUE_MAX", retry_after=1.0)
        self.in_flight += 1

    def _release(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)

    async def submit(self, request: EngineRequest, model_key: str) -> EngineResult:
        self._admit()
        remaining = None if request.deadline is None else max(0.0, request.deadline - time.monotonic())
        try:
            (result,) = await asyncio.wait_for(self.engine.generate([request]), remaining)
        except TimeoutError:
            request.cancel.set()
            raise DeadlineExceeded("the answer took longer than the request deadline; retry, or raise "
                                   "VQA_REQUEST_TIMEOUT_S") from None
        except asyncio.CancelledError:  # the client went away
            request.cancel.set()
            raise
        finally:
            self._release()
        if isinstance(result, VQAError):
            raise result
        return result

    def open_stream(self, request: EngineRequest, model_key: str) -> AsyncIterator[StreamDelta]:
        """Admit now (a full gate is a 429 before any byte is sent), stream concurrently."""
        self._admit()
        return _GatedStream(self, request)

    async def close(self) -> None:
        """Nothing queues here: in-flight requests end with their upstream calls."""


class _GatedStream:
    """The engine's stream, holding one gate slot until it ends, fails or is closed (even unstarted)."""

    def __init__(self, gate: ConcurrencyGate, request: EngineRequest) -> None:
        self.gate = gate
        self.request = request
        self._inner: Any = None
        self._released = False

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self.gate._release()

    def __aiter__(self) -> _GatedStream:
        return self

    async def __anext__(self) -> StreamDelta:
        if self._released:
            raise StopAsyncIteration
        if self._inner is None:
            self._inner = self.gate.engine.stream(self.request)
        try:
            return await self._inner.__anext__()
        except BaseException:  # end, error or cancellation: the slot is free again
            self._release()
            raise

    async def aclose(self) -> None:
        self._release()
        if self._inner is not None:
            await self._inner.aclose()

    def __del__(self) -> None:  # a stream dropped without being closed must not leak its slot
        self._release()

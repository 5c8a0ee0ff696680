"""How a stream's deltas reach their reader (the pipeline decides what they are; see pipeline.py).

    relay      the reader's side of a generating stream: its deltas as they come (what queued while
               the reader was busy leaves as one delta), then the generation's error, if any
    replay     a finished answer (a cache hit, an identical request's answer) as a stream
    Concluded  a stream that reports its end once, however it ends (read out, failed, or left)
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Callable

from vqaserve.types import Answer, StreamDelta


async def replay(answer: Answer) -> AsyncGenerator[StreamDelta, None]:
    """A finished answer as a stream, word by word (the pieces join to exactly the text)."""
    pieces = [p for p in re.split(r"(?<=\s)(?=\S)", answer.text) if p] or [""]
    for piece in pieces[:-1]:
        yield StreamDelta(text=piece)
    yield StreamDelta(text=pieces[-1], finish_reason=answer.finish_reason, usage=answer.usage,
                      confidence=answer.confidence, logprobs=answer.logprobs)


async def relay(work: asyncio.Future[Answer],
                deltas: asyncio.Queue[StreamDelta]) -> AsyncGenerator[StreamDelta, None]:
    """The client's side of a generating stream: its deltas as they come, then its error if it
    failed. A client that leaves cancels `work` (the generation, or its wait in a flight that
    others may still be waiting on)."""
    getter: asyncio.Future[StreamDelta] | None = None
    try:
        while not (work.done() and deltas.empty()):
            if not deltas.empty():  # a reader behind the engine: what waits goes out as one delta
                yield _joined(deltas)
                continue
            getter = asyncio.ensure_future(deltas.get())
            either: set[asyncio.Future[StreamDelta] | asyncio.Future[Answer]] = {getter, work}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
            else:
                getter.cancel()
        work.result()  # the generation's error, after every delta it sent
    finally:
        if getter is not None:
            getter.cancel()
        if not work.done():
            work.cancel()
            await asyncio.wait({work})


class Concluded:
    """A stream that reports its end once, however it ends: read to its last delta, failed, or closed
    by a reader that left (started or not: closing a generator never started does not run its code)."""

    def __init__(self, inner: AsyncGenerator[StreamDelta, None],
                 on_end: Callable[[bool, float | None], None]) -> None:
        self.inner, self.on_end = inner, on_end
        self.finished = self.ended = False
        self.confidence: float | None = None  # the last delta's

    def __aiter__(self) -> Concluded:
        return self

    async def __anext__(self) -> StreamDelta:
        try:
            delta = await self.inner.__anext__()
        except BaseException:
            self._end()
            raise
        if delta.finish_reason is not None:
            self.finished, self.confidence = True, delta.confidence
        return delta

    async def aclose(self) -> None:
        try:
            await self.inner.aclose()
        finally:
            self._end()

    def _end(self) -> None:
        if not self.ended:
            self.ended = True
            self.on_end(self.finished, self.confidence)


def _joined(deltas: asyncio.Queue[StreamDelta]) -> StreamDelta:
    """The queued deltas as one (text joined; the finish reason and usage of the last), up to and
    including a final one. Fewer, larger events cost the client and the server less than one per
    token, and the text is the same."""
    last = deltas.get_nowait()
    if last.finish_reason is not None or deltas.empty():
        return last
    pieces = [last.text]
    while last.finish_reason is None and not deltas.empty():
        last = deltas.get_nowait()
        pieces.append(last.text)
    return StreamDelta(text="".join(pieces), finish_reason=last.finish_reason, usage=last.usage,
                       confidence=last.confidence, logprobs=last.logprobs)

"""Capture on the running service: this process's writer, and the one hook every answer goes through.

`open_capture` builds the writer when VQA_CAPTURE_URL is set (create_app; the lifespan starts it and
closes it) and exports its figures in /metrics (capture/metrics.py). After an answer the routes call
`capture_answer`; a stream is wrapped by `capture_stream`, whose `answered(cid)` sse_events calls once
the stream is answered whole, with the id the client saw in every chunk. Either builds a record and
queues it, nothing more: no await, no encoding, no database (the writer's background task does that).
Its cost is the stage `capture` in `vqa_stage_seconds` (what `vqa bench capture` reports).

Nothing refused gets here: a refused request raises before it has an answer, and the writer keeps no
answer the output filter replaced (`content_filter`). A failure here is logged, never raised: capture
must not fail an answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from fastapi import Request

from vqaserve.server.state import AppState, state
from vqaserve.types import Answer, CacheStatus, Question, StreamDelta, Usage

if TYPE_CHECKING:
    from vqaserve.capture import CaptureWriter
    from vqaserve.components import DeltaStream
    from vqaserve.metrics import Metrics
    from vqaserve.settings import Settings

log = logging.getLogger("vqaserve.capture")

StreamAnswered = Callable[[str], None]  # called with the completion id once a stream is answered whole


def open_capture(settings: Settings, metrics: Metrics) -> CaptureWriter | None:
    """The writer for VQA_CAPTURE_URL (None when capture is off), its figures added to `metrics`."""
    if not settings.capture.url:
        return None
    from vqaserve.capture import CaptureWriter
    from vqaserve.capture.metrics import CaptureCollector

    writer = CaptureWriter.from_settings(settings.capture)
    metrics.add_collector(CaptureCollector(writer, per_worker=metrics.multiprocess_dir is not None))
    return writer


def key_name(request: Request) -> str | None:
    """The API key's name (a digest, server/access.py), never the key; None when the API is open."""
    found = request.scope.get("state", {}).get("api_key_id")
    return str(found) if found else None


def capture_answer(request: Request, question: Question, answer: Answer, response_id: str,
                   started: float) -> None:
    """Queue the record of a plain answer; `started` is the route's time.perf_counter() at arrival."""
    app = state(request)
    if app.capture is not None:
        _submit(app, app.capture, question, answer, response_id, started, key_name(request))


def capture_stream(request: Request, question: Question, cache: CacheStatus, deltas: DeltaStream,
                   started: float) -> tuple[DeltaStream, StreamAnswered | None]:
    """`deltas` to stream, and the callback sse_events calls with the completion id once the stream is
    answered (None when capture is off: the stream is then passed on untouched)."""
    app = state(request)
    writer = app.capture
    if writer is None:
        return deltas, None
    tap = _Tapped(deltas)
    key = key_name(request)

    def answered(completion_id: str) -> None:
        final = tap.final or StreamDelta()  # no final delta: sse_events says "stop", so does the record
        answer = Answer(text="".join(tap.pieces), model=question.answered_by,
                        finish_reason=final.finish_reason or "stop", usage=final.usage or Usage(), cache=cache,
                        request_id=question.request_id, served_by=question.served_by,
                        confidence=final.confidence)
        _submit(app, writer, question, answer, completion_id, started, key)

    return tap, answered


def _submit(app: AppState, writer: CaptureWriter, question: Question, answer: Answer, response_id: str,
            started: float, key: str | None) -> None:
    from vqaserve.capture import record_for

    t0 = time.perf_counter()
    try:
        assert app.pipeline is not None  # it answered
        writer.submit(record_for(question, answer, response_id=response_id, model=app.pipeline.model_id,
                                 latency_ms=(t0 - started) * 1000.0, key_name=key, confidence=answer.confidence))
    except Exception:  # noqa: BLE001 - capture never fails an answer
        log.exception("capture: the record of %s was not queued (the answer was sent)", response_id)
    app.metrics.observe_stage("capture", time.perf_counter() - t0)


class _Tapped:
    """A DeltaStream that keeps the text it passes on and the final delta (finish reason, usage,
    confidence): what the client was sent, for the record."""

    def __init__(self, inner: DeltaStream) -> None:
        self.inner = inner
        self.pieces: list[str] = []
        self.final: StreamDelta | None = None

    def __aiter__(self) -> _Tapped:
        return self

    async def __anext__(self) -> StreamDelta:
        delta = await self.inner.__anext__()
        if delta.text:
            self.pieces.append(delta.text)
        if delta.finish_reason is not None:
            self.final = delta
        return delta

    async def aclose(self) -> None:
        await self.inner.aclose()

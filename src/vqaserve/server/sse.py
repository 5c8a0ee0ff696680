"""Server-sent events for `stream: true`: the pipeline's deltas as chat.completion.chunk events.

The final chunk (the one with finish_reason) carries the answer's `confidence` and `review` flag, and
with `logprobs: true` all its tokens' log-probabilities: a delta here is text that the stop-string
hold-back, the output check and the event joining have cut anew, no longer one token, so tokens
cannot be matched to chunks cleanly. A client that concatenates the chunks' logprobs.content (as
OpenAI's clients do) gets the same list as from a plain answer.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from vqaserve.components import DeltaStream
from vqaserve.confidence import needs_review
from vqaserve.errors import VQAError
from vqaserve.metrics import Metrics
from vqaserve.server.responses import (
    ChatCompletionChunk,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    UsageModel,
    completion_id,
)
from vqaserve.server.route_support import record_answer
from vqaserve.types import StreamDelta, Usage

log = logging.getLogger("vqaserve.server")


class ClosingStreamingResponse(StreamingResponse):
    """Closes its events however the response ends. Starlette cancels a stream whose client left,
    but if that happens while a chunk is being sent, the generator is left suspended at its `yield`
    and only garbage collection would close it: until then the pipeline would not learn that the
    client left, and the engine (or vLLM upstream) would generate on for nobody."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]  # sse_events: an async generator


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _chunk(cid: str, created: int, model: str, delta: Delta | None, finish: str | None = None,
           usage: Usage | None = None, last: StreamDelta | None = None, review: bool = False) -> str:
    """One chunk; `last` (the final delta) adds its logprobs, confidence and the review flag."""
    logprobs = ChoiceLogprobs.of(last.logprobs) if last is not None else None
    choices = [] if delta is None else [ChunkChoice(delta=delta, finish_reason=finish, logprobs=logprobs)]
    chunk = ChatCompletionChunk(id=cid, created=created, model=model, choices=choices,
                                usage=UsageModel.of(usage) if usage is not None else None)
    payload = chunk.model_dump()
    for choice in payload["choices"]:  # OpenAI sends only the delta fields that are set
        choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
    if last is None:  # the extensions are the final chunk's
        del payload["confidence"], payload["review"]
    else:
        payload["confidence"], payload["review"] = last.confidence, review
    return _event(payload)


def _content_events(cid: str, created: int, model: str) -> Callable[[str], str]:
    """The text chunk of this stream, as `_chunk` writes it but without building a model per token:
    the part around the text is serialised once (a stream sends one such event per delta)."""
    template = _chunk(cid, created, model, Delta(content="\x00"))
    head, tail = template.split(json.dumps("\x00"), 1)
    return lambda text: head + json.dumps(text, ensure_ascii=False) + tail


async def sse_events(deltas: DeltaStream, *, model: str, cache: str, include_usage: bool,
                     metrics: Metrics, count: Callable[[str], int], review_below: float,
                     on_answer: Callable[[str], None] | None = None) -> AsyncIterator[str]:
    """Role chunk, content deltas, final chunk (finish_reason), usage chunk (if asked), [DONE].

    An error after the stream has started can no longer change the HTTP status: it becomes an SSE
    error event followed by [DONE]. `on_answer(id)` is told the completion id once the answer is
    whole (capture: server/capture_hook.py).
    """
    cid, created = completion_id(), int(time.time())
    content = _content_events(cid, created, model)
    yield _chunk(cid, created, model, Delta(role="assistant", content=""))
    pieces: list[str] = []
    finish: str | None = None
    usage: Usage | None = None
    last = StreamDelta()
    try:
        async for delta in deltas:
            if delta.text:
                pieces.append(delta.text)
                yield content(delta.text)
            if delta.finish_reason is not None:
                # no break: the pipeline writes the cache after its final delta, when resumed once more
                finish, usage, last = delta.finish_reason, delta.usage, delta
    except VQAError as exc:
        yield _event(exc.to_openai())
        yield "data: [DONE]\n\n"
        return
    except Exception:  # noqa: BLE001 - the status line is gone; report in-band, details to the log
        log.exception("stream failed")
        metrics.engine_errors.labels(code="internal").inc()
        yield _event({"error": {"message": "internal error while streaming; retry", "type": "server_error",
                                "param": None, "code": "internal_error"}})
        yield "data: [DONE]\n\n"
        return
    finally:
        await deltas.aclose()
    usage = usage or Usage(prompt_tokens=0, completion_tokens=count("".join(pieces)) if pieces else 0)
    record_answer(metrics, cache, usage, finish)
    if on_answer is not None:
        on_answer(cid)
    yield _chunk(cid, created, model, Delta(), finish=finish or "stop", last=last,
                 review=needs_review(last.confidence, review_below))
    if include_usage:
        yield _chunk(cid, created, model, None, usage=usage)
    yield "data: [DONE]\n\n"

"""`POST /v1/chat/completions` (plain and SSE streaming) and `GET /v1/models`."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from vqaserve.errors import EngineFailure, InvalidRequest, UnsupportedMediaType, VQAError
from vqaserve.metrics import Metrics
from vqaserve.pipeline import Pipeline
from vqaserve.server.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChunkChoice,
    Delta,
    ModelCard,
    ModelList,
    UsageModel,
    completion_id,
    parse_chat_request,
    to_question,
)
from vqaserve.server.schemas import CACHE_HEADER, CHAT_EXAMPLE, chat_request_schema, error_responses
from vqaserve.types import StreamDelta, Usage

router = APIRouter()
log = logging.getLogger("vqaserve.server")
ERRORS = error_responses(400, 401, 404, 413, 415, 429, 500, 502, 503, 504)
# The body is read by parse_chat_request (its error texts are the API's), so FastAPI is given the
# request schema for /openapi.json only, and the SSE variant of the 200 next to the JSON one. Before
# OpenAPI 3.2 (itemSchema) an event stream's `schema` describes one event, as tools read it.
SSE_EVENT = {
    "type": "object", "required": ["data"],
    "properties": {"data": {"type": "string", "description": "a chat.completion.chunk as JSON; the last "
                                                             "event is the text [DONE]"}},
}
CHAT_OPENAPI: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {
        "schema": chat_request_schema(), "examples": {
            "answer": {"summary": "one photo, one question", "value": CHAT_EXAMPLE},
            "stream": {"summary": "the same, streamed with usage",
                       "value": {**CHAT_EXAMPLE, "stream": True, "stream_options": {"include_usage": True}}}}}}},
    "responses": {"200": {
        "description": "`stream: false`: a chat.completion; `stream: true`: server-sent events, each "
                       "`data: <chat.completion.chunk JSON>` (role chunk, text chunks, a final chunk with "
                       "finish_reason, a usage chunk if stream_options.include_usage), then `data: [DONE]`; "
                       "an error after the stream started is `data: {\"error\": {...}}` then `data: [DONE]`",
        "headers": CACHE_HEADER,
        "content": {"text/event-stream": {"schema": SSE_EVENT}}}},
}


def pipeline_of(request: Request) -> Pipeline:
    pipeline = getattr(request.app.state, "pipeline", None)
    if pipeline is None:
        raise EngineFailure("the model is still loading; retry in a few seconds", retry_after=5)
    return pipeline


def model_header(served_by: str) -> str:
    """`x-vqa-model`: the weights that answered; a name outside ASCII (VQA_ADAPTERS allows any) percent-encoded."""
    from urllib.parse import quote

    return quote(served_by, safe="@._-:+")


def record_answer(metrics: Metrics, cache: str, usage: Usage, finish_reason: str | None) -> None:
    metrics.count_cache(cache)
    metrics.count_tokens(usage.prompt_tokens, usage.completion_tokens)
    if finish_reason == "content_filter":
        metrics.safety_blocks.labels(stage="output").inc()


_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # how one is written in JSON


def lone_surrogate(data: Any) -> str | None:
    """Where a JSON value holds an unpaired UTF-16 surrogate (`"\\ud800"` alone), or None.

    json.loads accepts such escapes, but the text cannot be encoded as UTF-8 later (tokenizer, cache
    key, the error reply itself), so it is refused up front with the place named.
    """
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, str):
            if _SURROGATE.search(node):
                return where or "body"
        elif isinstance(node, dict):
            for key, value in node.items():
                # the key goes into `param`, so it is written with the surrogate escaped
                name = key.encode("utf-8", "backslashreplace").decode("utf-8")
                if name != key:
                    return f"{where}.{name}" if where else name
                stack.append((f"{where}.{key}" if where else key, value))
        elif isinstance(node, list):
            stack.extend((f"{where}[{i}]", value) for i, value in enumerate(node))
    return None


async def read_json(request: Request) -> Any:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise UnsupportedMediaType(f"Content-Type {ctype or 'missing'!r} is not accepted here; send the "
                                   "body as JSON with Content-Type: application/json",
                                   param="Content-Type")
    body = await request.body()
    if not body.strip():
        raise InvalidRequest("the request body is empty; send a JSON object with messages", param="body")
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
                             param="body") from None
    except (UnicodeDecodeError, RecursionError):
        raise InvalidRequest("malformed JSON: the body must be UTF-8 JSON of sensible depth",
                             param="body") from None
    # Only a \uD800-\uDFFF escape can make one, so most bodies (image data included) skip the walk.
    where = lone_surrogate(data) if _SURROGATE_ESCAPE.search(body) else None
    if where is not None:
        raise InvalidRequest(f"{where}: the text holds an unpaired UTF-16 surrogate (a \\ud800-\\udfff escape "
                             "without its pair); send valid Unicode", param=where)
    return data


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=ERRORS, openapi_extra=CHAT_OPENAPI,
             summary="OpenAI chat completions (JSON or server-sent events)")
async def chat_completions(request: Request) -> Any:
    settings = request.app.state.settings
    chat = parse_chat_request(await read_json(request))
    question = to_question(chat, settings, request.state.request_id)
    pipeline = pipeline_of(request)
    metrics: Metrics = request.app.state.metrics
    if not chat.stream:
        answer = await pipeline.answer(question)
        record_answer(metrics, answer.cache, answer.usage, answer.finish_reason)
        body = ChatCompletion.of(answer, completion_id())
        return JSONResponse(body.model_dump(), headers={"x-vqa-cache": answer.cache,
                                                        "x-vqa-model": model_header(answer.served_by)})
    status, deltas = await pipeline.open_stream(question)
    include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
    events = sse_events(deltas, model=question.answered_by, cache=status,
                        include_usage=include_usage, metrics=metrics, count=pipeline.engine.count_tokens)
    return ClosingStreamingResponse(events, media_type="text/event-stream",
                             headers={"x-vqa-cache": status, "x-vqa-model": model_header(question.served_by),
                                      "cache-control": "no-cache",
                                      "x-accel-buffering": "no"})


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
           usage: Usage | None = None) -> str:
    choices = [] if delta is None else [ChunkChoice(delta=delta, finish_reason=finish)]
    chunk = ChatCompletionChunk(id=cid, created=created, model=model, choices=choices,
                                usage=UsageModel.of(usage) if usage is not None else None)
    payload = chunk.model_dump()
    for choice in payload["choices"]:  # OpenAI sends only the delta fields that are set
        choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
    return _event(payload)


async def sse_events(deltas: AsyncIterator[StreamDelta], *, model: str, cache: str, include_usage: bool,
                     metrics: Metrics, count: Any) -> AsyncIterator[str]:
    """Role chunk, content deltas, final chunk (finish_reason), usage chunk (if asked), [DONE].

    An error after the stream has started can no longer change the HTTP status: it becomes an SSE
    error event followed by [DONE].
    """
    cid, created = completion_id(), int(time.time())
    yield _chunk(cid, created, model, Delta(role="assistant", content=""))
    pieces: list[str] = []
    finish: str | None = None
    usage: Usage | None = None
    try:
        async for delta in deltas:
            if delta.text:
                pieces.append(delta.text)
                yield _chunk(cid, created, model, Delta(content=delta.text))
            if delta.finish_reason is not None:
                # no break: the pipeline writes the cache after its final delta, when resumed once more
                finish, usage = delta.finish_reason, delta.usage
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
        await deltas.aclose()  # type: ignore[attr-defined]
    usage = usage or Usage(prompt_tokens=0, completion_tokens=count("".join(pieces)) if pieces else 0)
    record_answer(metrics, cache, usage, finish)
    yield _chunk(cid, created, model, Delta(), finish=finish or "stop")
    if include_usage:
        yield _chunk(cid, created, model, None, usage=usage)
    yield "data: [DONE]\n\n"


@router.get("/v1/models", response_model=ModelList, responses=error_responses(401, 429, 500, 503))
async def list_models(request: Request) -> ModelList:
    pipeline = pipeline_of(request)
    base = pipeline.model_id
    cards = [ModelCard(id=name, parent=None if name == base else base) for name in pipeline.public_models()]
    return ModelList(data=cards)


"""`POST /v1/chat/completions` (plain and SSE streaming) and `GET /v1/models`."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from vqaserve.confidence import needs_review
from vqaserve.server.capture_hook import capture_answer, capture_stream
from vqaserve.server.chat_request import ChatCompletionRequest, to_question
from vqaserve.server.openapi import CHAT_OPENAPI, error_responses
from vqaserve.server.responses import ChatCompletion, ModelCard, ModelList, completion_id
from vqaserve.server.route_support import (
    JSONBodyRoute,
    answer_headers,
    answering_pipeline,
    model_header,
    record_answer,
)
from vqaserve.server.sse import ClosingStreamingResponse, sse_events
from vqaserve.server.state import state

router = APIRouter(route_class=JSONBodyRoute)
ERRORS = error_responses(400, 401, 404, 413, 415, 429, 500, 502, 503, 504)


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=ERRORS, openapi_extra=CHAT_OPENAPI,
             summary="OpenAI chat completions (JSON or server-sent events)")
async def chat_completions(chat: ChatCompletionRequest, request: Request) -> Any:
    started = time.perf_counter()
    app = state(request)
    question = to_question(chat, app.settings, request.state.request_id)
    pipeline = answering_pipeline(request)
    review_below = app.settings.capture.review_below
    if not chat.stream:
        answer = await pipeline.answer(question)
        record_answer(app.metrics, answer.cache, answer.usage, answer.finish_reason)
        review = needs_review(answer.confidence, review_below)
        body = ChatCompletion.of(answer, completion_id(), review)
        capture_answer(request, question, answer, body.id, started)
        return JSONResponse(body.model_dump(), headers=answer_headers(answer, review))
    status, deltas = await pipeline.open_stream(question)
    deltas, answered = capture_stream(request, question, status, deltas, started)
    include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
    events = sse_events(deltas, model=question.answered_by, cache=status, include_usage=include_usage,
                        metrics=app.metrics, count=pipeline.engine.count_tokens, review_below=review_below,
                        on_answer=answered)
    return ClosingStreamingResponse(events, media_type="text/event-stream",
                                    headers={"x-vqa-cache": status, "x-vqa-model": model_header(question.served_by),
                                             "cache-control": "no-cache", "x-accel-buffering": "no"})


@router.get("/v1/models", response_model=ModelList, responses=error_responses(401, 429, 500, 503))
async def list_models(request: Request) -> ModelList:
    pipeline = answering_pipeline(request)
    base = pipeline.model_id
    cards = [ModelCard(id=name, parent=None if name == base else base) for name in pipeline.public_models()]
    return ModelList(data=cards)

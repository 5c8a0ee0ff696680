"""Helpers the answering routes share: the loaded pipeline, answer metrics, and the JSON body checks.

`JSONBodyRoute` runs the checks FastAPI does not make the way this API words them (Content-Type,
empty or malformed JSON with its line and column, unpaired UTF-16 surrogates) before FastAPI
validates the body into the route's model. It parses the body once: Starlette keeps the parsed JSON
on the request, and FastAPI reads it from there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from vqaserve.errors import EngineFailure, InvalidRequest, UnsupportedMediaType
from vqaserve.metrics import Metrics
from vqaserve.pipeline import Pipeline
from vqaserve.server.state import state
from vqaserve.types import Answer, Usage

_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # how one is written in JSON


def answering_pipeline(request: Request) -> Pipeline:
    pipeline = state(request).pipeline
    if pipeline is None:
        raise EngineFailure("the model is still loading; retry in a few seconds", retry_after=5)
    return pipeline


def model_header(served_by: str) -> str:
    """`x-vqa-model`: the weights that answered; a name outside ASCII (VQA_ADAPTERS allows any) percent-encoded."""
    from urllib.parse import quote

    return quote(served_by, safe="@._-:+")


def answer_headers(answer: Answer, review: bool) -> dict[str, str]:
    """The headers of a whole (not streamed) answer: where it came from, who answered, how sure it is."""
    headers = {"x-vqa-cache": answer.cache, "x-vqa-model": model_header(answer.served_by)}
    if answer.confidence is not None:
        headers["x-vqa-confidence"] = f"{answer.confidence:.4f}"
    if review:
        headers["x-vqa-review"] = "true"
    return headers


def record_answer(metrics: Metrics, cache: str, usage: Usage, finish_reason: str | None) -> None:
    metrics.count_cache(cache)
    metrics.count_tokens(usage.prompt_tokens, usage.completion_tokens)
    if finish_reason == "content_filter":
        metrics.safety_blocks.labels(stage="output").inc()


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def lone_surrogate(data: Any) -> str | None:
    """Where a JSON value holds an unpaired UTF-16 surrogate (`"\\ud800"` alone), or None.

    json.loads accepts such escapes, but the text cannot be encoded as UTF-8 later (tokenizer, cache
    key, the error reply itself), so it is refused up front with the place named.
    """
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, str):
            if not node.isascii() and _SURROGATE.search(node):
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


async def check_json_body(request: Request) -> None:
    """Refuses, in the API's words, a body that is not one JSON document (see the module docstring)."""
    if content_type(request) != "application/json":
        raise UnsupportedMediaType(f"Content-Type {content_type(request) or 'missing'!r} is not accepted here; "
                                   "send the body as JSON with Content-Type: application/json",
                                   param="Content-Type")
    body = await request.body()
    if not body.strip():
        raise InvalidRequest("the request body is empty; send a JSON object with messages", param="body")
    try:
        data = await request.json()  # kept on the request: FastAPI's own read returns it
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
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object", param="body")


class JSONBodyRoute(APIRoute):
    """A route whose body model FastAPI validates, after `check_json_body`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        if self.body_field is None:
            return handle

        async def checked(request: Request) -> Response:
            await check_json_body(request)
            return await handle(request)

        return checked

"""What /openapi.json adds to the request and response models: examples, errors, the event stream,
the upload form, and this server's own limits.

The request models (chat_request.py, vqa_form.py) are the schema; this module only places them (the
form is read by its route, so FastAPI gets its schema through `openapi_extra`) and states what the
server's settings decide: the `max_tokens` limit (VQA_GENERATION__MAX_NEW_TOKENS_LIMIT).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from vqaserve.server.responses import ErrorResponse
from vqaserve.server.sampling import TOKEN_FIELDS
from vqaserve.server.vqa_form import VQAForm
from vqaserve.settings import GenerationSettings

# A 32x32 striped PNG: the request example is one a client can send as it is (and the fuzzer's
# examples phase does).
EXAMPLE_IMAGE = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAACAAAAAgCAIAAAD8GO2jAAAANElEQVR42u3NMQEAMAyEQF"
                 "ot71/Ri4iEmkg3mNjuzEwSAGi7/pfPCQgICAgICAgICAhs9QBOFRh8giyVCAAAAABJRU5ErkJggg==")
CHAT_EXAMPLE = {"max_tokens": 8, "temperature": 0, "messages": [{"role": "user", "content": [
    {"type": "image_url", "image_url": {"url": EXAMPLE_IMAGE}}, {"type": "text", "text": "What color is it?"}]}]}

_ERRORS = {
    400: "a malformed body, or a bad or unknown field (`param` names it)",
    401: "missing or wrong API key (when VQA_API_KEYS is set)",
    404: "unknown model",
    413: "body over VQA_MAX_BODY_BYTES",
    415: "wrong Content-Type, or an image format outside the allowlist",
    429: "queue full or rate limited (see Retry-After)",
    500: "an unexpected server fault (generic message with the request id)",
    502: "an image URL's host failed",
    503: "the model is loading or the engine failed (see Retry-After)",
    504: "generation or an image fetch passed its deadline",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` entries: each status with OpenAI's error JSON."""
    return {code: {"model": ErrorResponse, "description": _ERRORS[code]} for code in codes}


ANSWER_HEADERS = {"x-vqa-cache": {"description": "where the answer came from",
                                "schema": {"type": "string", "enum": ["hit", "miss", "bypass"]}},
                "x-vqa-model": {"description": "the weights that answered: the base model's name, or an adapter's "
                                               "version NAME@FINGERPRINT (percent-encoded outside ASCII)",
                                "schema": {"type": "string"}},
                "x-vqa-confidence": {"description": "the answer's confidence, 0..1 with 4 decimals (as the body's "
                                                    "`confidence`); not on streams, whose final chunk carries it",
                                     "schema": {"type": "string", "pattern": "^[01]\\.[0-9]{4}$"}},
                "x-vqa-review": {"description": "`true` when the confidence is under VQA_REVIEW_BELOW (flagged for "
                                                "review: hand the customer to a person); absent otherwise and on "
                                                "streams", "schema": {"type": "string", "enum": ["true"]}}}
# Before OpenAPI 3.2 (itemSchema) an event stream's `schema` describes one event, as tools read it.
SSE_EVENT = {
    "type": "object", "required": ["data"],
    "properties": {"data": {"type": "string", "description": "a chat.completion.chunk as JSON; the last "
                                                             "event is the text [DONE]"}},
}
CHAT_OPENAPI: dict[str, Any] = {
    "requestBody": {"content": {"application/json": {"examples": {
        "answer": {"summary": "one photo, one question", "value": CHAT_EXAMPLE},
        "stream": {"summary": "the same, streamed with usage",
                   "value": {**CHAT_EXAMPLE, "stream": True, "stream_options": {"include_usage": True}}}}}}},
    "responses": {"200": {
        "description": "`stream: false`: a chat.completion; `stream: true`: server-sent events, each "
                       "`data: <chat.completion.chunk JSON>` (role chunk, text chunks, a final chunk with "
                       "finish_reason and the extensions `confidence` and `review`, a usage chunk if "
                       "stream_options.include_usage), then `data: [DONE]`; "
                       "an error after the stream started is `data: {\"error\": {...}}` then `data: [DONE]`",
        "headers": ANSWER_HEADERS,
        "content": {"text/event-stream": {"schema": SSE_EVENT}}}},
}


def inline(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema with every `$ref` replaced by its definition.

    A schema placed through `openapi_extra` cannot use pydantic's `#/$defs/...` references: in an
    OpenAPI document `#` is the document root, where there are no `$defs`.
    """
    schema = model.model_json_schema(by_alias=True)
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return {**resolve(copy.deepcopy(defs[ref.rsplit("/", 1)[1]])), **resolve(rest)}
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


def form_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A form model's schema as a multipart form has it: a field is sent or left out, never null."""
    schema = inline(model)
    for prop in schema["properties"].values():
        branches = [b for b in prop.pop("anyOf", []) if b != {"type": "null"}]
        if len(branches) == 1:
            prop.update(branches[0])
        elif branches:
            prop["anyOf"] = branches
        if prop.get("default") is None:
            prop.pop("default", None)
    return schema


UPLOAD_OPENAPI: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": form_schema(VQAForm), "encoding": {"image": {"contentType": "image/*, application/octet-stream"},
                                                     "schema": {"contentType": "application/json"}}}}},
    "responses": {"200": {"headers": ANSWER_HEADERS}},
}


def finish_document(app: FastAPI, gen: GenerationSettings) -> None:
    """Makes `app`'s /openapi.json state this server's `max_tokens` limit (the models cannot: it is a
    setting), and drop FastAPI's 422 (a refused body is a 400 here, listed with the others)."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def document() -> dict[str, Any]:
        first = app.openapi_schema is None
        doc = generate()
        if first:
            chat = doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]
            form = doc["paths"]["/v1/vqa"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
            for props in (chat, form["properties"]):
                for name in TOKEN_FIELDS:
                    if name in props:
                        _set_maximum(props[name], gen.max_new_tokens_limit)
            for operations in doc["paths"].values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                doc["components"]["schemas"].pop(name, None)
        return doc

    app.openapi = document  # type: ignore[method-assign]


def _set_maximum(schema: dict[str, Any], limit: int) -> None:
    if schema.get("type") == "integer":
        schema["maximum"] = limit
    for branch in schema.get("anyOf", []):
        _set_maximum(branch, limit)

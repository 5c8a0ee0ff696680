"""`POST /v1/vqa`: one uploaded image + one question as a multipart form, for curl and simple clients.

    curl -F image=@jacket.jpg -F question="What occasion is it suitable for?" http://127.0.0.1:8000/v1/vqa
    curl -F image=@jacket.jpg -F question="Describe it as JSON." -F schema=@attributes.schema.json ...
"""

from __future__ import annotations

import math
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from vqaserve.engines.structured import schema_from_text
from vqaserve.errors import InvalidRequest, UnsupportedMediaType
from vqaserve.server.protocol import UsageModel
from vqaserve.server.routes_openai import model_header, pipeline_of, record_answer
from vqaserve.server.schemas import CACHE_HEADER, UPLOAD_FORM_SCHEMA, VQAResponse, error_responses
from vqaserve.types import GenerationParams, ImageRef, Part, Question, Turn

router = APIRouter()
FIELDS = ("image", "question", "model", "max_tokens", "temperature", "seed", "schema")
ERRORS = error_responses(400, 401, 404, 413, 415, 429, 500, 503, 504)
# The form is read below (its error texts are the API's), so FastAPI gets its schema for /openapi.json only.
UPLOAD_OPENAPI: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": UPLOAD_FORM_SCHEMA, "encoding": {"image": {"contentType": "image/*, application/octet-stream"}}}}},
    "responses": {"200": {"headers": CACHE_HEADER}},
}


def _text(form: Any, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a text field, not a file", param=name)
    return value


def _number(form: Any, name: str, kind: type, lo: float, hi: float) -> Any:
    raw = _text(form, name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a {kind.__name__}, got {raw[:40]!r}", param=name) from None
    if not (math.isfinite(value) and lo <= value <= hi):
        raise InvalidRequest(f"{name} must be between {lo:g} and {hi:g}", param=name)
    return value


async def _schema(form: Any) -> str:
    """The optional `schema` field (text, or a file as curl -F schema=@f.json sends it) -> canonical JSON."""
    value = form.get("schema")
    if value is None:
        return ""
    if isinstance(value, UploadFile):
        raw = await value.read()
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest("schema must be UTF-8 JSON", param="schema") from None
    return schema_from_text(value, "schema") if value.strip() else ""


@router.post("/v1/vqa", response_model=VQAResponse, responses=ERRORS, openapi_extra=UPLOAD_OPENAPI,
             summary="One photo and one question as a multipart form")
async def vqa(request: Request) -> JSONResponse:
    started = time.perf_counter()
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data":
        raise UnsupportedMediaType(f"Content-Type {ctype or 'missing'!r} is not accepted here; send a "
                                   "multipart form, e.g. curl -F image=@photo.jpg -F question=...",
                                   param="Content-Type")
    settings = request.app.state.settings
    gen = settings.generation
    try:
        # Small caps: a form with thousands of fields or a huge text part is refused fast.
        async with request.form(max_files=2, max_fields=len(FIELDS), max_part_size=64 * 1024) as form:
            unknown = sorted(k for k in form if k not in FIELDS)
            if unknown:
                raise InvalidRequest(f"unknown form field {unknown[0]!r}; accepted: {', '.join(FIELDS)}",
                                     param=unknown[0])
            repeated = sorted(k for k in set(form.keys()) if len(form.getlist(k)) > 1)
            if repeated:  # two files may come (image, schema), but never two of one field
                raise InvalidRequest(f"form field {repeated[0]!r} is given more than once; send it once",
                                     param=repeated[0])
            upload = form.get("image")
            if upload is None:
                raise InvalidRequest("image is missing; attach the photo as a file field named image "
                                     "(curl -F image=@photo.jpg)", param="image")
            if not isinstance(upload, UploadFile):
                raise InvalidRequest("image must be a file upload (curl -F image=@photo.jpg), not text",
                                     param="image")
            data = await upload.read()
            question = (_text(form, "question") or "").strip()
            model = _text(form, "model") or None
            max_tokens = _number(form, "max_tokens", int, 1, gen.max_new_tokens_limit)
            temperature = _number(form, "temperature", float, 0.0, 2.0)
            seed = _number(form, "seed", int, -(2**63), 2**63 - 1)
            schema = await _schema(form)
    except StarletteHTTPException as exc:  # the multipart parser's own refusals
        raise InvalidRequest(f"invalid multipart form: {exc.detail}", param="body") from None
    if not question:
        raise InvalidRequest("question is missing or empty; add -F question='What is this?'",
                             param="question")
    params = GenerationParams(max_new_tokens=max_tokens or gen.max_new_tokens,
                              temperature=gen.temperature if temperature is None else temperature,
                              top_p=gen.top_p, top_k=gen.top_k, seed=seed, json_schema=schema)
    q = Question(turns=[Turn(role="user", parts=[Part(image_ref=ImageRef(kind="bytes", payload=data,
                                                                           name="image")),
                                                  Part(text=question)])],
                 params=params, model=model, request_id=request.state.request_id)
    answer = await pipeline_of(request).answer(q)
    record_answer(request.app.state.metrics, answer.cache, answer.usage, answer.finish_reason)
    timings = {k: round(v, 2) for k, v in answer.timings.items()}
    timings["total"] = round((time.perf_counter() - started) * 1000.0, 2)
    body = VQAResponse(answer=answer.text, model=answer.model, cached=answer.cached,
                       finish_reason=answer.finish_reason, usage=UsageModel.of(answer.usage), timings=timings,
                       request_id=q.request_id)
    return JSONResponse(body.model_dump(), headers={"x-vqa-cache": answer.cache,
                                                    "x-vqa-model": model_header(answer.served_by)})

"""`POST /v1/vqa`: one uploaded image + one question as a multipart form, for curl and simple clients.

    curl -F image=@jacket.jpg -F question="What occasion is it suitable for?" http://127.0.0.1:8000/v1/vqa
    curl -F image=@jacket.jpg -F question="Describe it as JSON." -F schema=@attributes.schema.json ...
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from vqaserve.confidence import needs_review
from vqaserve.errors import InvalidRequest, UnsupportedMediaType
from vqaserve.server.capture_hook import capture_answer
from vqaserve.server.openapi import UPLOAD_OPENAPI, error_responses
from vqaserve.server.responses import UsageModel, VQAResponse
from vqaserve.server.route_support import answer_headers, answering_pipeline, content_type, record_answer
from vqaserve.server.sampling import generation_params
from vqaserve.server.state import state
from vqaserve.server.validation import validate
from vqaserve.server.vqa_form import Upload, VQAForm
from vqaserve.types import ImageRef, Part, Question, Turn

router = APIRouter()
FIELDS = tuple(f.alias or name for name, f in VQAForm.model_fields.items())
ERRORS = error_responses(400, 401, 404, 413, 415, 429, 500, 503, 504)


async def read_form(request: Request) -> dict[str, str | Upload]:
    """The form's fields, each sent once; files read into memory (the body is already within its limit)."""
    if content_type(request) != "multipart/form-data":
        raise UnsupportedMediaType(f"Content-Type {content_type(request) or 'missing'!r} is not accepted here; "
                                   "send a multipart form, e.g. curl -F image=@photo.jpg -F question=...",
                                   param="Content-Type")
    values: dict[str, str | Upload] = {}
    try:
        # Small caps: a form with thousands of fields or a huge text part is refused fast. Unknown
        # fields fit in them, and the model refuses them by name.
        async with request.form(max_files=2, max_fields=len(FIELDS), max_part_size=64 * 1024) as form:
            for name, value in form.multi_items():
                if name in values:  # two files may come (image, schema), but never two of one field
                    raise InvalidRequest(f"form field {name!r} is given more than once; send it once", param=name)
                values[name] = (Upload(await value.read(), value.filename) if isinstance(value, UploadFile)
                                else value)
    except StarletteHTTPException as exc:  # the multipart parser's own refusals
        raise InvalidRequest(f"invalid multipart form: {exc.detail}", param="body") from None
    return values


@router.post("/v1/vqa", response_model=VQAResponse, responses=ERRORS, openapi_extra=UPLOAD_OPENAPI,
             summary="One photo and one question as a multipart form")
async def vqa(request: Request) -> JSONResponse:
    started = time.perf_counter()
    form: VQAForm = validate(VQAForm, await read_form(request))
    gen = state(request).settings.generation
    picture = ImageRef(kind="bytes", payload=form.image.data, name="image")
    q = Question(turns=[Turn(role="user", parts=[Part(image_ref=picture), Part(text=form.question.strip())])],
                 params=generation_params(form.generation(), gen, form.schema_), model=form.model or None,
                 request_id=request.state.request_id)
    answer = await answering_pipeline(request).answer(q)
    record_answer(state(request).metrics, answer.cache, answer.usage, answer.finish_reason)
    timings = {k: round(v, 2) for k, v in answer.timings.items()}
    timings["total"] = round((time.perf_counter() - started) * 1000.0, 2)
    review = needs_review(answer.confidence, state(request).settings.capture.review_below)
    body = VQAResponse(answer=answer.text, model=answer.model, cached=answer.cached,
                       finish_reason=answer.finish_reason, usage=UsageModel.of(answer.usage), timings=timings,
                       request_id=q.request_id, confidence=answer.confidence, review=review)
    capture_answer(request, q, answer, body.request_id, started)
    return JSONResponse(body.model_dump(), headers=answer_headers(answer, review))

"""Ratings of captured answers, and what the review page reads (docs/learning-loop.md).

    POST   /v1/feedback                         {"id", "rating": "up"|"down", "correction"?, "comment"?}
    GET    /v1/captures?view=review&model=...   captured answers, newest first, a page at a time
    DELETE /v1/captures/{id}                    an erasure request: the answer, its rating, and its
                                                pictures when no other kept answer shows them
    GET    /v1/captures/{id}/pictures/{hash}    a picture of that answer as the model saw it (PNG)

API keys apply as on every /v1 route. With capture off (no VQA_CAPTURE_URL) each answers 409 naming
the variable; a database that fails answers 503, without its address (the server log has it).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from vqaserve.capture import CaptureQuery, CaptureRecord, CaptureWriter, make_feedback
from vqaserve.capture.record import MAX_FEEDBACK_CHARS
from vqaserve.errors import CaptureOff, CaptureUnavailable, NotFound
from vqaserve.server.responses import ErrorResponse
from vqaserve.server.route_support import JSONBodyRoute
from vqaserve.server.state import state
from vqaserve.server.validation import says

log = logging.getLogger("vqaserve.capture")
router = APIRouter(route_class=JSONBodyRoute, tags=["capture"])
T = TypeVar("T")

_ERRORS = {400: "a malformed body or a bad field or parameter (`param` names it)",
           401: "missing or wrong API key (when VQA_API_KEYS is set)",
           404: "no captured answer with this id (or no such picture of it)",
           409: "capture is off: the server was started without VQA_CAPTURE_URL",
           413: "body over VQA_MAX_BODY_BYTES",
           415: "wrong Content-Type: send the body as JSON with Content-Type: application/json",
           503: "the capture database is unavailable (see Retry-After)"}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse, "description": _ERRORS[code]} for code in codes}


# Text that reaches the database: PostgreSQL's text type cannot hold NUL, so it is refused up front.
NO_NUL = r"^[^\x00]*$"
CaptureId = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=NO_NUL),
                      says("the answer's id as the client received it (`chatcmpl-...`, or /v1/vqa's "
                           "`request_id`): 1 to 256 characters")]
FeedbackText = Annotated[Annotated[str, StringConstraints(max_length=MAX_FEEDBACK_CHARS, pattern=NO_NUL)] | None,
                         says(f"text of at most {MAX_FEEDBACK_CHARS} characters without NUL, or null",
                              every_error=True)]


# --- bodies and answers ----------------------------------------------------------------------------
class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"id": "chatcmpl-3f2a9c1b0d4e5f6789abcdef", "rating": "down", "correction": "sunglasses"}]})

    id: CaptureId
    rating: Annotated[Literal["up", "down"], says("'up' or 'down'")]
    correction: FeedbackText = Field(default=None, description="the right answer, when this one was wrong")
    comment: FeedbackText = None


class FeedbackSaved(BaseModel):
    id: str
    rating: Literal["up", "down"]
    correction: str | None
    comment: str | None
    status: Literal["saved"] = "saved"


class Rating(BaseModel):
    rating: Literal["up", "down"]
    correction: str | None
    comment: str | None
    at: datetime


class CapturedTurn(BaseModel):
    role: str
    text: str
    images: int = Field(description="pictures in this turn")


class CapturedAnswer(BaseModel):
    """One captured answer, as `vqa capture list --json` prints it, with `flagged` added."""

    id: str = Field(description="the response id the client received")
    created: datetime
    model: str = Field(description="the base model")
    adapter: str | None = Field(description="the adapter that answered (null: the base model)")
    adapter_fingerprint: str = Field(description="a digest of the adapter's weights (\"\" when unknown)")
    question: str = Field(description="the last question asked")
    turns: list[CapturedTurn] = Field(description="the conversation as asked")
    answer: str
    finish_reason: str
    confidence: float | None
    flagged: bool = Field(description="confidence under VQA_REVIEW_BELOW")
    latency_ms: float
    cache: str = Field(description="hit | miss | bypass")
    key_name: str | None = Field(description="the API key's name (a digest; never the key), null without keys")
    images: list[str] = Field(description="content hashes of the pictures, in order (GET .../pictures/{hash})")
    feedback: Rating | None

    @classmethod
    def of(cls, r: CaptureRecord, review_below: float) -> CapturedAnswer:
        fb = r.feedback
        return cls(id=r.id, created=r.created, model=r.model, adapter=r.adapter,
                   adapter_fingerprint=r.adapter_fingerprint, question=r.question,
                   turns=[CapturedTurn.model_validate(t) for t in r.turns], answer=r.answer,
                   finish_reason=r.finish_reason, confidence=r.confidence,
                   flagged=r.confidence is not None and r.confidence < review_below, latency_ms=r.latency_ms,
                   cache=r.cache, key_name=r.key_name, images=list(r.image_hashes),
                   feedback=None if fb is None else Rating(rating=fb.rating, correction=fb.correction,
                                                            comment=fb.comment, at=fb.at))


class CaptureList(BaseModel):
    object: Literal["list"] = "list"
    data: list[CapturedAnswer]
    total: int = Field(description="answers matching the filters (for paging)")
    limit: int
    offset: int
    review_below: float = Field(description="VQA_REVIEW_BELOW: answers under it are flagged")


class CaptureDeleted(BaseModel):
    id: str
    deleted: Literal[True] = True


# --- helpers ---------------------------------------------------------------------------------------
def _writer(request: Request) -> CaptureWriter:
    writer = state(request).capture
    if writer is None:
        raise CaptureOff("capture is off on this server: start it with VQA_CAPTURE_URL=sqlite:///PATH (or "
                         "postgresql://...) to keep answers for rating and review")
    return writer


async def _db(work: Awaitable[T]) -> T:
    """A store call; its failure reaches the client without the database's address (a file path)."""
    try:
        return await work
    except CaptureUnavailable as exc:
        log.warning("capture route: %s", exc.message)
        raise CaptureUnavailable("the capture database is unavailable; retry later (the server log says why)",
                                 retry_after=5) from None


def _not_found(capture_id: str, param: str) -> NotFound:
    return NotFound(f"no captured answer {capture_id!r}: it was not captured (capture off at the time, "
                    "VQA_CAPTURE_SAMPLE, an answer the output filter replaced) or has been deleted; "
                    "GET /v1/captures lists the ids", param=param, code="capture_not_found")


def served_by(record: CaptureRecord) -> str:
    """The `model` label of the weights that answered, as `x-vqa-model` and vqa_answers_total name them."""
    if record.adapter is None:
        return record.model
    return f"{record.adapter}@{record.adapter_fingerprint}" if record.adapter_fingerprint else record.adapter


def _iso_date(value: Any) -> Any:
    """`2026-12-01` is a date (for `until`, that whole day); anything longer a date and time. Only ISO
    text: pydantic alone would also read a number as seconds since 1970."""
    if isinstance(value, str):
        if not re.match(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError("not an ISO 8601 date")
        if len(value) == 10:
            return date.fromisoformat(value)
    return value


When = Annotated[datetime | date | None, BeforeValidator(_iso_date),
                 says("a date (2026-12-01) or a date and time (2026-12-01T14:30:00, UTC unless an offset is "
                      "given)", every_error=True)]


def _utc(when: datetime | date, end_of_day: bool = False) -> datetime:
    """A query's date or time as UTC; a bare date is its day's start, or with `end_of_day` the next day's."""
    if not isinstance(when, datetime):
        start = datetime(when.year, when.month, when.day, tzinfo=UTC)
        return start + timedelta(days=1) if end_of_day and when < date.max else start
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    try:
        return when.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 with an offset: past the end of time, as far as captures go
        return datetime.min.replace(tzinfo=UTC) if when.year == 1 else datetime.max.replace(tzinfo=UTC)


VIEWS = {"review": "flagged or rated thumbs-down (what needs a look)", "flagged": "confidence under VQA_REVIEW_BELOW",
         "down": "rated thumbs-down", "low": "confidence under `below`", "rated": "rated up or down",
         "all": "every captured answer"}
View = Literal["review", "flagged", "down", "low", "rated", "all"]


def query_of(view: View, review_below: float, below: float | None, **filters: Any) -> CaptureQuery:
    """The store's query for a view of the review list."""
    if view == "review":
        return CaptureQuery(confidence_below=review_below, rating="down", either=True, **filters)
    if view == "flagged":
        return CaptureQuery(confidence_below=review_below, **filters)
    if view == "low":
        return CaptureQuery(confidence_below=review_below if below is None else below, **filters)
    if view == "down":
        return CaptureQuery(rating="down", **filters)
    return CaptureQuery(rated=view == "rated", **filters)


# --- routes ----------------------------------------------------------------------------------------
@router.post("/v1/feedback", response_model=FeedbackSaved, responses=_errors(400, 401, 404, 409, 413, 415, 503),
             summary="Rate a captured answer (a second rating replaces the first)")
async def feedback(body: FeedbackRequest, request: Request) -> FeedbackSaved:
    writer = _writer(request)
    rated = make_feedback(body.rating, body.correction, body.comment)
    if await _db(writer.set_feedback(body.id, rated)) == "not_found":
        raise _not_found(body.id, "id")
    record = await _db(writer.store.get(body.id))
    if record is not None:
        state(request).metrics.count_feedback(served_by(record), rated.rating)
    return FeedbackSaved(id=body.id, rating=rated.rating, correction=rated.correction, comment=rated.comment)


@router.get("/v1/captures", response_model=CaptureList, responses=_errors(400, 401, 409, 503),
            summary="Captured answers for review, newest first")
async def list_captures(
        request: Request,
        view: Annotated[View, Query(description="; ".join(f"`{k}`: {v}" for k, v in VIEWS.items()))] = "review",
        model: Annotated[str | None, Query(max_length=256, pattern=NO_NUL, description="the base model")] = None,
        adapter: Annotated[str | None, Query(max_length=256, pattern=NO_NUL,
                                             description="the adapter's name")] = None,
        since: Annotated[When, Query(description="captured at or after this (UTC)")] = None,
        until: Annotated[When, Query(description="captured before this (UTC; a bare date includes that "
                                                 "whole day)")] = None,
        below: Annotated[float | None, Query(ge=0, le=1, description="view `low`: the confidence threshold "
                                                                     "(default VQA_REVIEW_BELOW)"),
                         says("a number from 0 to 1")] = None,
        limit: Annotated[int, Query(ge=1, le=200), says("from 1 to 200 (answers a page)")] = 50,
        offset: Annotated[int, Query(ge=0, le=1_000_000), says("from 0 to 1000000 (answers skipped)")] = 0,
) -> CaptureList:
    writer = _writer(request)
    review_below = state(request).settings.capture.review_below
    query = query_of(view, review_below, below, model=model, adapter=adapter,
                     since=None if since is None else _utc(since),
                     until=None if until is None else _utc(until, end_of_day=True), limit=limit, offset=offset)
    records = await _db(writer.store.query(query))
    total = await _db(writer.store.count(query))
    return CaptureList(data=[CapturedAnswer.of(r, review_below) for r in records], total=total, limit=limit,
                       offset=offset, review_below=review_below)


IdParam = Annotated[str, Path(max_length=256, pattern=NO_NUL), says("the answer's id: at most 256 characters, "
                                                                      "without NUL")]


@router.delete("/v1/captures/{capture_id}", response_model=CaptureDeleted, responses=_errors(400, 401, 404, 409, 503),
               summary="Delete a captured answer (an erasure request)")
async def delete_capture(capture_id: IdParam, request: Request) -> CaptureDeleted:
    if not await _db(_writer(request).delete(capture_id)):
        raise _not_found(capture_id, "capture_id")
    return CaptureDeleted(id=capture_id)


_PNG = {"description": "the picture as the model saw it", "content": {"image/png": {
    "schema": {"type": "string", "format": "binary"}}}}


@router.get("/v1/captures/{capture_id}/pictures/{content_hash}", response_class=Response,
            responses={200: _PNG, **_errors(400, 401, 404, 409, 503)},
            summary="A picture of a captured answer (PNG)")
async def capture_picture(capture_id: IdParam,
                          content_hash: Annotated[str, Path(pattern=r"^[0-9a-f]{32}$"),
                                                  says("32 hex digits: a hash from the answer's `images`")],
                          request: Request) -> Response:
    writer = _writer(request)
    record = await _db(writer.store.get(capture_id))
    if record is None:
        raise _not_found(capture_id, "capture_id")
    png = await _db(writer.store.picture(content_hash)) if content_hash in record.image_hashes else None
    if png is None:
        raise NotFound(f"answer {capture_id!r} has no stored picture {content_hash!r} (with VQA_CAPTURE_IMAGES=false "
                       "only hashes are kept)", param="content_hash", code="picture_not_found")
    # Customers' photos: never kept by a browser or proxy cache.
    return Response(png, media_type="image/png", headers={"cache-control": "no-store"})

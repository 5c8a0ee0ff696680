"""What capture keeps of one answered request, the feedback on it, and the filters of a query.

A `CaptureRecord` is built on the request path (`record_for`: cheap, no encoding) and carries its
pictures as references to the PIL images the model saw; the writer encodes them to PNG off the
request path. Read back from a store, a record's pictures carry their content hash only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from vqaserve.errors import InvalidRequest

if TYPE_CHECKING:
    from vqaserve.types import Answer, Question

Rating = Literal["up", "down"]
CacheLevel = Literal["hit", "miss", "bypass"]
FeedbackResult = Literal["saved", "not_found"]  # "not_found": the route answers 404

MAX_FEEDBACK_CHARS = 2000


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class CapturedPicture:
    """A picture by its content hash; `image` (a PIL image) only on the way in, to be encoded."""

    content_hash: str
    image: Any = None  # PIL.Image.Image as the model saw it; None when read back or images are off
    memory_bytes: int = 0  # what holding `image` in the writer's queue costs


@dataclass(frozen=True)
class Feedback:
    rating: Rating
    correction: str | None = None
    comment: str | None = None
    at: datetime = field(default_factory=utc_now)


def make_feedback(rating: Any, correction: Any = None, comment: Any = None) -> Feedback:
    """Feedback from a client's fields, checked: errors name the field and the fix."""
    if rating not in ("up", "down"):
        raise InvalidRequest(f"rating must be 'up' or 'down', not {rating!r}", param="rating")
    return Feedback(rating=rating, correction=_text(correction, "correction"), comment=_text(comment, "comment"))


def _text(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a string", param=name)
    value = value.strip()
    if len(value) > MAX_FEEDBACK_CHARS:
        raise InvalidRequest(f"{name} is longer than {MAX_FEEDBACK_CHARS} characters; shorten it", param=name)
    return value or None


@dataclass(frozen=True)
class CaptureRecord:
    """One answered request. `id` is the id the client saw (`chatcmpl-...` or /v1/vqa's request id)."""

    id: str
    model: str
    answer: str
    turns: tuple[dict[str, Any], ...]  # [{"role", "text", "images": n}], the conversation as asked
    finish_reason: str = "stop"
    adapter: str | None = None  # None: the base model
    adapter_fingerprint: str = ""  # digest of the adapter's weights ("" when unknown or no adapter)
    confidence: float | None = None
    latency_ms: float = 0.0
    cache: CacheLevel = "bypass"
    key_name: str | None = None  # the API key's name, never the key; None without keys
    pictures: tuple[CapturedPicture, ...] = ()
    created: datetime = field(default_factory=utc_now)
    feedback: Feedback | None = None  # read back from a store only

    @property
    def image_hashes(self) -> tuple[str, ...]:
        return tuple(p.content_hash for p in self.pictures)

    @property
    def question(self) -> str:
        """The last user turn's text: what the answer answers."""
        return next((str(t.get("text", "")) for t in reversed(self.turns) if t.get("role") == "user"), "")

    @property
    def memory_bytes(self) -> int:
        return sum(p.memory_bytes for p in self.pictures) + len(self.answer) + 512


def record_for(question: Question, answer: Answer, *, response_id: str, model: str, latency_ms: float,
               key_name: str | None = None, confidence: float | None = None,
               adapter_fingerprint: str = "") -> CaptureRecord:
    """The record of an answered request, from the pipeline's own Question (images resolved) and Answer.

    `model` is the base model's id (`pipeline.model_id`; `answer.model` is the name asked for, which
    may be an adapter's). The adapter is kept by its public name, its weights' digest beside it:
    the pipeline names the version that answered `NAME@FINGERPRINT` (engines/adapters.py). Cheap on
    purpose (it runs on the request path): no copy, no encoding.
    """
    adapter, _, fingerprint = (question.adapter or "").partition("@")
    turns: list[dict[str, Any]] = []
    pictures: list[CapturedPicture] = []
    for turn in question.turns:
        images = [p.image for p in turn.parts if p.image is not None]
        turns.append({"role": turn.role, "text": turn.text, "images": len(images)})
        pictures += [CapturedPicture(img.content_hash, img.image, img.width * img.height * 3) for img in images]
    return CaptureRecord(id=response_id, model=model, answer=answer.text, turns=tuple(turns),
                         finish_reason=answer.finish_reason, adapter=adapter or None,
                         adapter_fingerprint=adapter_fingerprint or fingerprint, confidence=confidence,
                         latency_ms=latency_ms, cache=answer.cache, key_name=key_name,
                         pictures=tuple(pictures))


@dataclass(frozen=True)
class CaptureQuery:
    """Filters of a listing, newest first. `confidence_below` is the flag (VQA_REVIEW_BELOW) or a
    `--low-confidence X`; with `either`, it and `rating` are OR-ed (the review list: flagged or
    thumbs-down) instead of AND-ed. `rated` keeps only records with feedback (export)."""

    confidence_below: float | None = None
    rating: Rating | None = None
    either: bool = False
    rated: bool = False
    model: str | None = None
    adapter: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 50
    offset: int = 0

    def __post_init__(self) -> None:
        if self.confidence_below is not None and not math.isfinite(self.confidence_below):
            raise InvalidRequest("the confidence threshold must be a finite number")
        if self.limit < 1 or self.offset < 0:
            raise InvalidRequest("limit must be at least 1 and offset at least 0")
        for name in ("since", "until"):
            when = getattr(self, name)
            if when is not None and when.tzinfo is None:
                object.__setattr__(self, name, when.replace(tzinfo=UTC))  # naive times are UTC

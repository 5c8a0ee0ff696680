"""What the answering routes send back: OpenAI's chat.completion and its stream chunks, the model
list, `POST /v1/vqa`'s JSON answer, and OpenAI's error object. Routes build their bodies from these
models, and /openapi.json describes the responses with them."""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, Field

from vqaserve.types import Answer, TokenLogprob, Usage

CONFIDENCE = ("extension: how sure the model was of the answer, 0..1: the probability of its least probable "
              "token (docs/api.md: Confidence and logprobs); null when the engine cannot tell")
REVIEW = "extension: true when confidence is under VQA_REVIEW_BELOW: have a person check the answer (hand-off)"


class UsageModel(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, usage: Usage) -> UsageModel:
        return cls(**usage.to_dict())


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobModel(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(description="the most likely tokens at this place, most likely first "
                                                       "(top_logprobs of them)")


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobModel] | None = Field(description="every generated token, the one that ended the "
                                                                "answer included (as vLLM gives them)")
    refusal: None = None

    @classmethod
    def of(cls, tokens: list[TokenLogprob] | None) -> ChoiceLogprobs | None:
        if tokens is None:
            return None
        return cls(content=[TokenLogprobModel(token=t.token, logprob=t.logprob, bytes=_bytes(t), top_logprobs=[
            TopLogprob(token=a.token, logprob=a.logprob, bytes=_bytes(a)) for a in t.top]) for t in tokens])


def _bytes(token: TokenLogprob) -> list[int] | None:
    return None if token.bytes is None else list(token.bytes)


class Choice(BaseModel):
    index: int = 0
    message: ChatCompletionMessage
    finish_reason: str
    logprobs: ChoiceLogprobs | None = Field(default=None, description=(
        "with logprobs: true (null for an answer the output check replaced with its refusal)"))


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: UsageModel
    confidence: float | None = Field(description=CONFIDENCE)
    review: bool = Field(description=REVIEW)

    @classmethod
    def of(cls, answer: Answer, completion_id: str, review: bool) -> ChatCompletion:
        return cls(id=completion_id, model=answer.model, usage=UsageModel.of(answer.usage),
                   confidence=answer.confidence, review=review,
                   choices=[Choice(message=ChatCompletionMessage(content=answer.text),
                                   finish_reason=answer.finish_reason, logprobs=ChoiceLogprobs.of(answer.logprobs))])


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = Field(default=None, description=(
        "with logprobs: true, on the final chunk: all the answer's tokens"))


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: UsageModel | None = None
    # Extensions, on the final chunk (the one with finish_reason) only.
    confidence: float | None = Field(default=None, description=CONFIDENCE + "; on the final chunk only")
    review: bool | None = Field(default=None, description=REVIEW + "; on the final chunk only")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "vqaserve"
    parent: str | None = None  # set for LoRA adapters: the base model they apply to


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


class VQAResponse(BaseModel):
    """The JSON answer of `POST /v1/vqa`."""

    answer: str
    model: str
    cached: bool
    finish_reason: Literal["stop", "length", "content_filter"]
    usage: UsageModel
    timings: dict[str, float] = Field(description="milliseconds per stage, and total")
    request_id: str
    confidence: float | None = Field(description=CONFIDENCE)
    review: bool = Field(description=REVIEW)

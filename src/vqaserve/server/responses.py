"""What the answering routes send back: OpenAI's chat.completion and its stream chunks, the model
list, `POST /v1/vqa`'s JSON answer, and OpenAI's error object. Routes build their bodies from these
models, and /openapi.json describes the responses with them."""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, Field

from vqaserve.types import Answer, Usage


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


class Choice(BaseModel):
    index: int = 0
    message: ChatCompletionMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: UsageModel

    @classmethod
    def of(cls, answer: Answer, completion_id: str) -> ChatCompletion:
        return cls(id=completion_id, model=answer.model, usage=UsageModel.of(answer.usage),
                   choices=[Choice(message=ChatCompletionMessage(content=answer.text),
                                   finish_reason=answer.finish_reason)])


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: UsageModel | None = None


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

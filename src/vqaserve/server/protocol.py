"""OpenAI chat-completions shapes (pydantic) and their conversion into a `types.Question`.

Requests accept the fields OpenAI clients send, and vLLM's sampling extensions that clients of a
vLLM server send (ignore_eos, min_tokens, min_p, ...), so those clients work unchanged. Fields that
would hand the client control over the model's internals (chat templates, processor kwargs) and
features this service does not have (n > 1, tools, logprobs, audio, beam search) are refused with a
400 that names the field.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vqaserve.engines.structured import parse_response_format
from vqaserve.errors import InvalidRequest
from vqaserve.settings import Settings
from vqaserve.types import Answer, GenerationParams, ImageRef, Part, Question, Turn, Usage

# Known OpenAI fields that change nothing here (documented in docs/api.md): accepted, ignored.
IGNORED_FIELDS = {"frequency_penalty", "presence_penalty", "logit_bias", "user", "metadata", "store",
                  "service_tier", "parallel_tool_calls", "prediction", "reasoning_effort",
                  "top_logprobs", "web_search_options", "safety_identifier", "prompt_cache_key",
                  "verbosity",
                  # vLLM's: length_penalty acts only in beam search (refused below);
                  # spaces_between_special_tokens only when special tokens are kept (they never are);
                  # the queue is first come, first served and the response id is ours.
                  "length_penalty", "spaces_between_special_tokens", "priority", "request_id",
                  "session_id"}
# Fields some servers accept that would let a client reach into the prompt or preprocessing.
REFUSED_FIELDS = {
    "chat_template": "the chat template is fixed by the model; remove chat_template",
    "chat_template_kwargs": "chat template options are fixed by the server; remove chat_template_kwargs",
    "mm_processor_kwargs": "image preprocessing is fixed by the server; remove mm_processor_kwargs",
    "processor_kwargs": "image preprocessing is fixed by the server; remove processor_kwargs",
    "tools": "tool calling is not supported; remove tools",
    "tool_choice": "tool calling is not supported; remove tool_choice",
    "functions": "function calling is not supported; remove functions",
    "function_call": "function calling is not supported; remove function_call",
    "audio": "audio output is not supported; remove audio",
    "media_io_kwargs": "image loading is fixed by the server; remove media_io_kwargs",
}
# vLLM fields accepted at a value that changes nothing (clients that send every field with its
# default keep working); any other value is refused, because neither engine can honour it or
# because it would reach the prompt.
_STRUCTURED = ("structured output through {0} is not supported; remove {0} and send response_format "
               "(json_schema or json_object) instead")
DEFAULT_ONLY: dict[str, tuple[tuple[object, ...], str]] = {
    "use_beam_search": ((False,), "beam search is not supported; remove use_beam_search"),
    "best_of": ((1,), "best_of must be 1 (one completion per request); remove best_of"),
    "skip_special_tokens": ((True,), "special tokens are always removed from answers; remove "
                                     "skip_special_tokens"),
    "add_generation_prompt": ((True,), "the prompt format is fixed by the model; remove "
                                       "add_generation_prompt"),
    "continue_final_message": ((False,), "continuing an assistant message is not supported; end with "
                                         "a user message and remove continue_final_message"),
    "echo": ((False,), "echo is not supported; remove echo"),
    "add_special_tokens": ((False,), "the prompt's special tokens are fixed by the chat template; "
                                     "remove add_special_tokens"),
    "documents": ((), "documents would be placed in the prompt by the chat template; put their text "
                      "in a message and remove documents"),
    "truncate_prompt_tokens": ((), "prompts are never truncated; shorten the conversation and remove "
                                   "truncate_prompt_tokens"),
    "truncation_side": ((), "prompts are never truncated; remove truncation_side"),
    "prompt_logprobs": ((), "logprobs are not supported; remove prompt_logprobs"),
    "allowed_token_ids": (([],), "allowed_token_ids is not supported; remove it"),
    "bad_words": (([],), "bad_words is not supported; remove it (or use stop)"),
    "watermarking": ((False,), "watermarking is not supported; remove watermarking"),
    "cache_salt": ((), "cache_salt is not supported; send \"cache\": false to keep this request out "
                       "of the shared answer cache"),
    **{name: ((), _STRUCTURED.format(name)) for name in (
        "structured_outputs", "guided_json", "guided_regex", "guided_choice", "guided_grammar",
        "guided_decoding_backend", "guided_whitespace_pattern")},
}
# vLLM sets no limit; real clients send a model's few end-of-turn ids.
MAX_STOP_TOKEN_IDS = 32


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: Any = None  # str or a list of parts; checked in _parts for messages that name the part
    name: str | None = None


class ChatCompletionRequest(BaseModel):
    """The accepted request body. Unknown fields are refused by `parse_chat_request`."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, strict=True)  # "5" is not a number

    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    # vLLM's sampling extensions; OpenAI clients send them via extra_body.
    top_k: int | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    logprobs: bool | None = None
    response_format: dict[str, Any] | None = None
    modalities: list[str] | None = None
    cache: bool = True  # extension: false skips the answer cache for this request


def pydantic_param(exc: ValidationError) -> tuple[str, str]:
    """The first validation problem as (`messages[0].content`, message)."""
    err = exc.errors()[0]
    param = ""
    for part in err.get("loc", ()):
        param += f"[{part}]" if isinstance(part, int) else (f".{part}" if param else str(part))
    return param or "body", str(err.get("msg", "invalid value"))


def parse_chat_request(data: Any) -> ChatCompletionRequest:
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object", param="body")
    for key, value in data.items():
        if key in REFUSED_FIELDS:
            raise InvalidRequest(REFUSED_FIELDS[key], param=key)
        if key in DEFAULT_ONLY and not _is_default(value, DEFAULT_ONLY[key][0]):
            raise InvalidRequest(DEFAULT_ONLY[key][1], param=key)
    known = set(ChatCompletionRequest.model_fields) | IGNORED_FIELDS | set(DEFAULT_ONLY)
    unknown = sorted(k for k in data if k not in known)
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r}; remove it (the API documentation lists "
                             "the accepted fields)", param=unknown[0])
    try:
        request = ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        param, msg = pydantic_param(exc)
        raise InvalidRequest(f"{param}: {msg}", param=param) from None
    return request


def _is_default(value: object, accepted: tuple[object, ...]) -> bool:
    """null, or one of `accepted` of the same type (True == 1 in Python, but not here)."""
    return value is None or any(type(value) is type(ok) and value == ok for ok in accepted)


# --- conversion --------------------------------------------------------------------------------
def _check_int(value: int, name: str, lo: int, hi: int) -> int:
    if not lo <= value <= hi:
        raise InvalidRequest(f"{name} must be between {lo} and {hi}, got {value}", param=name)
    return value


def generation_params(req: ChatCompletionRequest, settings: Settings) -> GenerationParams:
    gen = settings.generation
    if req.n is not None and req.n != 1:
        raise InvalidRequest(f"n={req.n} is not supported; only one choice per request (n=1)", param="n")
    if req.logprobs:
        raise InvalidRequest("logprobs are not supported; remove logprobs", param="logprobs")
    if req.modalities and set(req.modalities) - {"text"}:
        raise InvalidRequest("only the 'text' output modality is supported", param="modalities")
    max_new = gen.max_new_tokens
    for name in ("max_tokens", "max_completion_tokens"):  # the newer name wins when both are sent
        value = getattr(req, name)
        if value is not None:
            max_new = _check_int(value, name, 1, gen.max_new_tokens_limit)
    temperature = gen.temperature if req.temperature is None else req.temperature
    if not (math.isfinite(temperature) and 0.0 <= temperature <= 2.0):
        raise InvalidRequest("temperature must be between 0 and 2 (0 = greedy)", param="temperature")
    top_p = gen.top_p if req.top_p is None else req.top_p
    if not (math.isfinite(top_p) and 0.0 < top_p <= 1.0):
        raise InvalidRequest("top_p must be greater than 0 and at most 1", param="top_p")
    # vLLM's -1 means what our 0 means: no top-k of the client's own
    top_k = gen.top_k if req.top_k is None else max(0, _check_int(req.top_k, "top_k", -1, 1000))
    seed = None if req.seed is None else _check_int(req.seed, "seed", -(2**63), 2**63 - 1)
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > 4 or any(not s or len(s) > 200 for s in stops):
        raise InvalidRequest("stop must be up to 4 non-empty strings of at most 200 characters",
                             param="stop")
    schema = parse_response_format(req.response_format)
    if schema and req.min_tokens:  # the grammar ends the answer where its JSON ends; EOS cannot wait
        raise InvalidRequest("min_tokens cannot be combined with a JSON response_format (the answer ends "
                             "where its JSON does); remove min_tokens", param="min_tokens")
    return GenerationParams(max_new_tokens=max_new, temperature=temperature, top_p=top_p, top_k=top_k,
                            seed=seed, stop=tuple(stops), **_extensions(req, max_new), json_schema=schema)


def _extensions(req: ChatCompletionRequest, max_new: int) -> dict[str, Any]:
    """vLLM's sampling extensions, checked with vLLM's ranges (tighter where vLLM allows nonsense)."""
    out: dict[str, Any] = {}
    if req.min_tokens is not None:
        if not 0 <= req.min_tokens <= max_new:
            raise InvalidRequest(f"min_tokens must be between 0 and max_tokens ({max_new}), got "
                                 f"{req.min_tokens}; lower min_tokens or raise max_tokens", param="min_tokens")
        out["min_tokens"] = req.min_tokens
    if req.min_p is not None:
        if not (math.isfinite(req.min_p) and 0.0 <= req.min_p <= 1.0):
            raise InvalidRequest("min_p must be between 0 and 1 (0 = off)", param="min_p")
        out["min_p"] = req.min_p
    if req.repetition_penalty is not None:
        if not (math.isfinite(req.repetition_penalty) and 0.0 < req.repetition_penalty <= 2.0):
            raise InvalidRequest("repetition_penalty must be greater than 0 and at most 2 (1 = off)",
                                 param="repetition_penalty")
        out["repetition_penalty"] = req.repetition_penalty
    ids = req.stop_token_ids or []
    if len(ids) > MAX_STOP_TOKEN_IDS or any(not 0 <= i < 2**31 for i in ids):
        raise InvalidRequest(f"stop_token_ids must be up to {MAX_STOP_TOKEN_IDS} token ids, each "
                             "between 0 and 2**31-1", param="stop_token_ids")
    out["stop_token_ids"] = tuple(dict.fromkeys(ids))  # order kept, repeats dropped
    out["ignore_eos"] = bool(req.ignore_eos)
    out["include_stop_str_in_output"] = bool(req.include_stop_str_in_output)
    return out


def image_ref(url: Any, name: str) -> ImageRef:
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"{name}: give the image as {{'url': 'data:image/png;base64,...'}} or an "
                             "http(s) URL", param=name)
    head = url[:8].lower()
    if head.startswith("data:"):
        return ImageRef(kind="data", payload=url, name=name)
    if head.startswith(("http://", "https://")):
        return ImageRef(kind="url", payload=url, name=name)
    raise InvalidRequest(f"{name}: only data: URIs and http(s) URLs are accepted", param=name)


def _parts(msg: ChatMessage, where: str) -> list[Part]:
    if msg.content is None:
        raise InvalidRequest(f"{where}.content is missing; give text or a list of parts",
                             param=f"{where}.content")
    if isinstance(msg.content, str):
        return [Part(text=msg.content)]
    if not isinstance(msg.content, list) or not msg.content:
        raise InvalidRequest(f"{where}.content must be a string or a non-empty list of parts",
                             param=f"{where}.content")
    parts: list[Part] = []
    for j, item in enumerate(msg.content):
        name = f"{where}.content[{j}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{name} must be an object like {{'type': 'text', 'text': '...'}}",
                                 param=name)
        kind = item.get("type")
        if kind == "text":
            text = item.get("text")
            if not isinstance(text, str):
                raise InvalidRequest(f"{name}.text must be a string", param=f"{name}.text")
            parts.append(Part(text=text))
        elif kind == "image_url":
            if msg.role != "user":
                raise InvalidRequest(f"{name}: images are accepted in user messages only", param=name)
            raw = item.get("image_url")
            url = raw.get("url") if isinstance(raw, dict) else raw
            parts.append(Part(image_ref=image_ref(url, f"{name}.image_url")))
        else:
            raise InvalidRequest(f"{name}.type {kind!r} is not supported; use 'text' or 'image_url'",
                                 param=f"{name}.type")
    return parts


def to_question(req: ChatCompletionRequest, settings: Settings, request_id: str) -> Question:
    turns: list[Turn] = []
    for i, msg in enumerate(req.messages):
        where = f"messages[{i}]"
        role = "system" if msg.role == "developer" else msg.role
        if role not in ("system", "user", "assistant"):
            raise InvalidRequest(f"{where}.role {msg.role!r} is not supported; use system, user or "
                                 "assistant", param=f"{where}.role")
        turns.append(Turn(role=role, parts=_parts(msg, where)))  # type: ignore[arg-type]
    if turns[-1].role != "user":
        raise InvalidRequest("the last message must be a user message (the question to answer)",
                             param=f"messages[{len(turns) - 1}].role")
    return Question(turns=turns, params=generation_params(req, settings), model=req.model or None,
                    request_id=request_id, stream=req.stream, cache=req.cache)


# --- responses ---------------------------------------------------------------------------------
class UsageModel(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, usage: Usage) -> UsageModel:
        return cls(**usage.to_dict())


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
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
                   choices=[Choice(message=AssistantMessage(content=answer.text),
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

"""`POST /v1/chat/completions`' body: one pydantic model that parses, validates and documents it.

The route takes `ChatCompletionRequest` as its body, so FastAPI validates requests with it and writes
/openapi.json from it; a refusal becomes a 400 naming the field (validation.py). Requests accept the
fields OpenAI clients send, and vLLM's sampling extensions (sampling.py) that clients of a vLLM
server send, so those clients work unchanged. Fields that would hand the client control over the
model's internals (chat templates, processor kwargs) and features this service does not have (n > 1,
tools, logprobs, audio, beam search) are refused with a 400 that names the field; unknown fields too.
Rules JSON Schema cannot state (the last message is the question; min_tokens with a JSON
response_format) are validators, and the schema's descriptions say them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PrivateAttr,
    Tag,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from vqaserve.engines.structured import JSON_OBJECT_SCHEMA, check_schema
from vqaserve.errors import InvalidRequest
from vqaserve.server.sampling import GenerationFields, generation_params
from vqaserve.server.validation import Integral, Problem, no_such, says
from vqaserve.settings import Settings
from vqaserve.types import ImageRef, Part, Question, Turn

# The shapes the image decoder and fetcher take (images/decode.py, images/fetch.py): a base64 data: URI
# (the media type is checked against the allowlist later: 415 for others), or an http(s) URL without
# spaces, control characters or backslashes. Whether the bytes are a picture, and whether a host answers,
# no schema can say.
DATA_URL = r"^[dD][aA][tT][aA]:[\w.+-]+/[\w.+-]+(;[\w.+-]+=[\w.+-]+)*;[bB][aA][sS][eE]64,"
HTTP_URL = r"^[hH][tT][tT][pP][sS]?://[^\x00-\x20\x7f\\]+$"
IMAGE_URL = f"({DATA_URL})|({HTTP_URL})"
# Fields some servers accept that would let a client reach into the prompt or preprocessing: refused
# whatever the value (and absent from the schema, which admits no unknown field).
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


# --- markers for the fields that change nothing ---------------------------------------------------
@dataclass(frozen=True)
class _Ignored:
    """A known field that changes nothing here: any value is accepted and ignored."""

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"description": "accepted and ignored"}


IGNORED = _Ignored()
Ignored = Annotated[Any, IGNORED]


@dataclass(frozen=True)
class DefaultOnly:
    """A field accepted only at the value that changes nothing (or null), so clients that send every
    field at its default keep working; any other value is refused with `why`."""

    accepted: tuple[object, ...]
    why: str

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(self._check)

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"anyOf": [{"type": "null"}, *({"const": v} for v in self.accepted)],
                "description": f"accepted only at this value; otherwise refused: {self.why}"}

    def _check(self, value: object) -> object:
        # The same type too: True == 1 in Python, but `best_of: true` is not `best_of: 1`.
        if value is None or any(type(value) is type(ok) and value == ok for ok in self.accepted):
            return value
        raise Problem(self.why)


def default_only(*accepted: object, why: str) -> DefaultOnly:
    return DefaultOnly(accepted, why)


_STRUCTURED = ("structured output through {0} is not supported; remove {0} and send response_format "
               "(json_schema or json_object) instead")


# --- messages -------------------------------------------------------------------------------------
class _Lenient(BaseModel):
    """Nested objects: fields OpenAI defines that this server does not use are accepted and ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ImageURL(_Lenient):
    url: Annotated[str, Field(pattern=IMAGE_URL)]
    detail: str | None = Field(None, description="accepted and ignored (the pixel budget is the server's)")


ImageURLValue = Annotated[
    Annotated[ImageURL, Tag("url object")] | Annotated[str, Field(pattern=IMAGE_URL), Tag("url string")],
    Discriminator(lambda v: "url string" if isinstance(v, str) else "url object"),
    says("{'url': 'data:image/png;base64,...'} or {'url': 'https://...'} (no spaces, control characters or "
         "backslashes: percent-encode them)", note=(
        "a data: URI (image/jpeg, png, webp, bmp, gif, heic, heif or avif; base64) or an http(s) URL the "
        "server fetches; at most VQA_MAX_IMAGES images per request"), every_error=True)]


class ImagePart(_Lenient):
    type: Literal["image_url"]
    image_url: ImageURLValue


def _part_tag(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "text part"  # refused as "must be a JSON object"
    kind = value.get("type")
    return {"text": "text part", "image_url": "image part"}.get(kind) if isinstance(kind, str) else None


UserPart = Annotated[
    Annotated[TextPart, Tag("text part")] | Annotated[ImagePart, Tag("image part")],
    Discriminator(_part_tag, custom_error_type=no_such("type"), custom_error_message="use 'text' or 'image_url'")]


class InstructionText(TextPart):
    """A text part outside user messages (where images are not accepted)."""

    @model_validator(mode="before")
    @classmethod
    def _no_image(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("type") == "image_url":
            raise Problem("images are accepted in user messages only")
        return data


def _content_tag(value: Any) -> str | None:
    return "text content" if isinstance(value, str) else "part list" if isinstance(value, list) else None


_CONTENT = "text, or a non-empty list of parts"
_NO_CONTENT = {"custom_error_type": "content_shape", "custom_error_message": f"give {_CONTENT}"}
UserContent = Annotated[
    Annotated[str, Tag("text content")] | Annotated[list[UserPart], Field(min_length=1), Tag("part list")],
    Discriminator(_content_tag, **_NO_CONTENT), says(_CONTENT)]
TextContent = Annotated[
    Annotated[str, Tag("text content")] | Annotated[list[InstructionText], Field(min_length=1), Tag("part list")],
    Discriminator(_content_tag, **_NO_CONTENT), says(_CONTENT, note="text parts only")]


class InstructionMessage(_Lenient):
    role: Literal["system", "developer"] = Field(description="developer reads as system")
    content: TextContent
    name: str | None = None


class UserMessage(_Lenient):
    role: Literal["user"]
    content: UserContent
    name: str | None = None


class AssistantMessage(_Lenient):
    role: Literal["assistant"]
    content: TextContent
    name: str | None = None


_ROLES = {"system": "instruction message", "developer": "instruction message", "user": "user message",
          "assistant": "assistant message"}


def _role_tag(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "user message"  # refused as "must be a JSON object"
    role = value.get("role")
    return _ROLES.get(role) if isinstance(role, str) else None


Message = Annotated[
    Annotated[InstructionMessage, Tag("instruction message")] | Annotated[UserMessage, Tag("user message")]
    | Annotated[AssistantMessage, Tag("assistant message")],
    Discriminator(_role_tag, custom_error_type=no_such("role"),
                  custom_error_message="use system, developer, user or assistant")]


# --- the rest of the request ----------------------------------------------------------------------
class StreamOptions(_Lenient):
    include_usage: bool = Field(False, description="a last chunk with the token usage (choices: [])")


class TextFormat(_Lenient):
    type: Literal["text"] = "text"


class JSONObjectFormat(_Lenient):
    type: Literal["json_object"]


class JSONSchemaSpec(_Lenient):
    name: Any = Field(None, description="OpenAI's name for the schema; accepted and not used")
    description: Any = Field(None, description="accepted and not used")
    schema_: dict[str, Any] = Field(alias="schema", description=(
        "a JSON Schema object: at most 16 KB as compact JSON and 64 properties in all, each subschema an "
        "object (or true/false), at most 16 levels deep"))
    strict: bool | None = Field(None, description="answers follow the schema either way")


class JSONSchemaFormat(_Lenient):
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


def _format_tag(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "text format"  # refused as "must be a JSON object"
    kind = value.get("type", "text")
    names = {"text": "text format", "json_object": "json_object format", "json_schema": "json_schema format"}
    return names.get(kind) if isinstance(kind, str) else None


ResponseFormat = Annotated[
    Annotated[TextFormat, Tag("text format")] | Annotated[JSONObjectFormat, Tag("json_object format")]
    | Annotated[JSONSchemaFormat, Tag("json_schema format")],
    Discriminator(_format_tag, custom_error_type=no_such("type"),
                  custom_error_message="use 'text', 'json_object' or 'json_schema'")]


class LogprobsFields(BaseModel):
    """OpenAI's log-probabilities: refused until they are implemented (issue 29). Accepting them is
    this class: make the annotations `bool | None` and `int | None` (0..20) and read them in
    `to_question`."""

    logprobs: Annotated[Any, default_only(False, why="logprobs are not supported; remove logprobs")] = None
    top_logprobs: Annotated[Any, default_only(
        0, why="top_logprobs needs logprobs, which are not supported; remove top_logprobs")] = None


class VLLMDefaults(BaseModel):
    """vLLM's fields that neither engine can honour, or that would reach the prompt: accepted at the
    value that changes nothing, refused otherwise; and the ones that change nothing here at all."""

    use_beam_search: Annotated[Any, default_only(False, why="beam search is not supported; remove "
                                                            "use_beam_search")] = None
    best_of: Annotated[Any, default_only(1, why="best_of must be 1 (one completion per request); remove "
                                                "best_of")] = None
    skip_special_tokens: Annotated[Any, default_only(True, why="special tokens are always removed from "
                                                               "answers; remove skip_special_tokens")] = None
    add_generation_prompt: Annotated[Any, default_only(True, why="the prompt format is fixed by the model; "
                                                                 "remove add_generation_prompt")] = None
    continue_final_message: Annotated[Any, default_only(False, why=(
        "continuing an assistant message is not supported; end with a user message and remove "
        "continue_final_message"))] = None
    echo: Annotated[Any, default_only(False, why="echo is not supported; remove echo")] = None
    add_special_tokens: Annotated[Any, default_only(False, why=(
        "the prompt's special tokens are fixed by the chat template; remove add_special_tokens"))] = None
    documents: Annotated[Any, default_only(why=(
        "documents would be placed in the prompt by the chat template; put their text in a message and "
        "remove documents"))] = None
    truncate_prompt_tokens: Annotated[Any, default_only(why=(
        "prompts are never truncated; shorten the conversation and remove truncate_prompt_tokens"))] = None
    truncation_side: Annotated[Any, default_only(why="prompts are never truncated; remove "
                                                     "truncation_side")] = None
    prompt_logprobs: Annotated[Any, default_only(why="logprobs are not supported; remove prompt_logprobs")] = None
    allowed_token_ids: Annotated[Any, default_only([], why="allowed_token_ids is not supported; remove it")] = None
    bad_words: Annotated[Any, default_only([], why="bad_words is not supported; remove it (or use stop)")] = None
    watermarking: Annotated[Any, default_only(False, why="watermarking is not supported; remove "
                                                         "watermarking")] = None
    cache_salt: Annotated[Any, default_only(why=(
        "cache_salt is not supported; send \"cache\": false to keep this request out of the shared answer "
        "cache"))] = None
    structured_outputs: Annotated[Any, default_only(why=_STRUCTURED.format("structured_outputs"))] = None
    guided_json: Annotated[Any, default_only(why=_STRUCTURED.format("guided_json"))] = None
    guided_regex: Annotated[Any, default_only(why=_STRUCTURED.format("guided_regex"))] = None
    guided_choice: Annotated[Any, default_only(why=_STRUCTURED.format("guided_choice"))] = None
    guided_grammar: Annotated[Any, default_only(why=_STRUCTURED.format("guided_grammar"))] = None
    guided_decoding_backend: Annotated[Any, default_only(why=_STRUCTURED.format("guided_decoding_backend"))] = None
    guided_whitespace_pattern: Annotated[Any, default_only(
        why=_STRUCTURED.format("guided_whitespace_pattern"))] = None
    # vLLM's that change nothing: length_penalty acts only in beam search; spaces_between_special_tokens
    # only where special tokens are kept (never); the queue is first come, first served; ids are ours.
    length_penalty: Ignored = None
    spaces_between_special_tokens: Ignored = None
    priority: Ignored = None
    request_id: Ignored = None
    session_id: Ignored = None


class OpenAIIgnored(BaseModel):
    """OpenAI's fields that change nothing here (docs/api.md lists them)."""

    frequency_penalty: Ignored = None
    presence_penalty: Ignored = None
    logit_bias: Ignored = None
    user: Ignored = None
    metadata: Ignored = None
    store: Ignored = None
    service_tier: Ignored = None
    parallel_tool_calls: Ignored = None
    prediction: Ignored = None
    reasoning_effort: Ignored = None
    web_search_options: Ignored = None
    safety_identifier: Ignored = None
    prompt_cache_key: Ignored = None
    verbosity: Ignored = None


class Conversation(BaseModel):
    """What to answer, by which model, and how to send it."""

    messages: Annotated[list[Message], Field(min_length=1), says("a non-empty list of messages", note=(
        "the conversation; the last message is the question to answer and must be the user's; images "
        "only in user messages, at most VQA_MAX_IMAGES in all"))]
    model: str | None = Field(None, description="the base model or a LoRA adapter name (GET /v1/models)")
    stream: bool = Field(False, description="true: server-sent events (text/event-stream)")
    stream_options: StreamOptions | None = None


# Bases listed last come first in the schema.
class ChatCompletionRequest(OpenAIIgnored, VLLMDefaults, LogprobsFields, GenerationFields, Conversation):
    """OpenAI's chat-completions request as this server reads it; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    n: Annotated[int | None, Field(ge=1, le=1), Integral, says("1 (one choice per request)")] = None
    response_format: ResponseFormat | None = Field(None, description=(
        "text (the default), json_object, or json_schema: the answer is JSON following the schema; not "
        "with min_tokens"))
    modalities: Annotated[list[Literal["text"]] | None, says("['text'] (answers are text)")] = None
    cache: bool = Field(True, description="extension: false skips the answer cache for this request")
    _json_schema: str = PrivateAttr("")

    @model_validator(mode="before")
    @classmethod
    def _refused(cls, data: Any) -> Any:
        for name in REFUSED_FIELDS.keys() & (data.keys() if isinstance(data, dict) else set()):
            raise Problem(REFUSED_FIELDS[name], at=name)
        return data

    @model_validator(mode="after")
    def _cross_field(self) -> ChatCompletionRequest:
        last = len(self.messages) - 1
        if self.messages[last].role != "user":
            raise Problem("the last message must be a user message (the question to answer)",
                          at=f"messages[{last}].role")
        self._json_schema = _schema_of(self.response_format)
        if self._json_schema and self.min_tokens:  # the grammar ends the answer where its JSON ends
            raise Problem("min_tokens cannot be combined with a JSON response_format (the answer ends where "
                          "its JSON does); remove min_tokens", at="min_tokens")
        return self

    @property
    def json_schema(self) -> str:
        """The answer's JSON Schema as canonical JSON text ("" for free text)."""
        return self._json_schema


def _schema_of(response_format: TextFormat | JSONObjectFormat | JSONSchemaFormat | None) -> str:
    if isinstance(response_format, JSONObjectFormat):
        return JSON_OBJECT_SCHEMA
    if not isinstance(response_format, JSONSchemaFormat):
        return ""
    try:
        return check_schema(response_format.json_schema.schema_)
    except InvalidRequest as exc:
        raise Problem(exc.message, at=exc.param or "response_format") from None


def marked(model: type[BaseModel], marker: type) -> dict[str, Any]:
    """The fields of `model` carrying a marker of this type (DefaultOnly, _Ignored), with the marker."""
    return {name: m for name, info in model.model_fields.items() for m in info.metadata if isinstance(m, marker)}


IGNORED_FIELDS = set(marked(ChatCompletionRequest, _Ignored))
DEFAULT_ONLY: dict[str, DefaultOnly] = marked(ChatCompletionRequest, DefaultOnly)


# --- conversion -----------------------------------------------------------------------------------
def _part(part: TextPart | ImagePart, name: str) -> Part:
    if isinstance(part, TextPart):
        return Part(text=part.text)
    url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
    kind: Literal["data", "url"] = "data" if url[:5].lower() == "data:" else "url"
    return Part(image_ref=ImageRef(kind=kind, payload=url, name=f"{name}.image_url"))


def to_question(req: ChatCompletionRequest, settings: Settings, request_id: str) -> Question:
    turns: list[Turn] = []
    for i, msg in enumerate(req.messages):
        if isinstance(msg.content, str):
            parts = [Part(text=msg.content)]
        else:
            parts = [_part(p, f"messages[{i}].content[{j}]") for j, p in enumerate(msg.content)]
        turns.append(Turn(role="system" if msg.role == "developer" else msg.role, parts=parts))
    return Question(turns=turns, params=generation_params(req, settings.generation, req.json_schema),
                    model=req.model or None, request_id=request_id, stream=req.stream, cache=req.cache)

"""`POST /v1/chat/completions`' body: one pydantic model that parses, validates and documents it.

The route takes `ChatCompletionRequest` as its body, so FastAPI validates requests with it and writes
/openapi.json from it; a refusal becomes a 400 naming the field (validation.py). Requests accept the
fields OpenAI clients send, and vLLM's sampling extensions (sampling.py) that clients of a vLLM
server send, so those clients work unchanged. Fields that would hand the client control over the
model's internals (chat templates, processor kwargs) and features this service does not have (n > 1,
tools, prompt logprobs, audio, beam search) are refused with a 400 that names the field; unknown fields too
(compat.py declares those, and the fields that change nothing here). Rules JSON Schema cannot state
(min_tokens with a JSON response_format) are validators, and the schema's descriptions say them. As
with OpenAI and vLLM, a conversation may end with any role: the answer is the next assistant turn.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    model_validator,
)

from vqaserve.engines.structured import JSON_OBJECT_SCHEMA, check_schema
from vqaserve.errors import InvalidRequest
from vqaserve.server.compat import (
    REFUSED_FIELDS,
    DefaultOnly,
    Ignored,
    OpenAIIgnored,
    VLLMDefaults,
    marked,
)
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
    """OpenAI's log-probabilities of the answer's tokens (docs/api.md: Confidence and logprobs)."""

    logprobs: bool | None = Field(None, description=(
        "true: choices[0].logprobs.content gives each answer token with its log-probability (in a stream, "
        "all of them on the final chunk); such a request skips the answer cache"))
    top_logprobs: Annotated[int | None, Field(ge=0, le=20), Integral, says(
        "between 0 and 20", note="the most likely tokens at each place; needs logprobs: true")] = None


class Conversation(BaseModel):
    """What to answer, by which model, and how to send it."""

    messages: Annotated[list[Message], Field(min_length=1), says("a non-empty list of messages", note=(
        "the conversation; the answer is the assistant turn that follows it; images only in user "
        "messages, at most VQA_MAX_IMAGES in all"))]
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
        self._json_schema = _schema_of(self.response_format)
        if self._json_schema and self.min_tokens:  # the grammar ends the answer where its JSON ends
            raise Problem("min_tokens cannot be combined with a JSON response_format (the answer ends where "
                          "its JSON does); remove min_tokens", at="min_tokens")
        if self.top_logprobs and not self.logprobs:  # 0 without logprobs changes nothing (as in vLLM)
            raise Problem("top_logprobs needs logprobs: true; add \"logprobs\": true or remove top_logprobs",
                          at="top_logprobs")
        return self

    @property
    def logprobs_asked(self) -> int | None:
        """GenerationParams.logprobs: None, or how many top_logprobs to give with each token."""
        return (self.top_logprobs or 0) if self.logprobs else None

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


IGNORED_FIELDS = set(marked(ChatCompletionRequest, Ignored))
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
    params = replace(generation_params(req, settings.generation, req.json_schema), logprobs=req.logprobs_asked)
    return Question(turns=turns, params=params, model=req.model or None, request_id=request_id,
                    stream=req.stream, cache=req.cache)

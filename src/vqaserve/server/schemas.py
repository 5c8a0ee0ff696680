"""What `/openapi.json` says the two answering routes accept and return.

Documentation only: requests are still read by `protocol.parse_chat_request` / `to_question` and by
`routes_vqa`, which stay the single source of validation and error texts. These shapes describe
that code (ranges, refused values, unknown fields) so that client generators, Swagger's "try it
out" and the schema fuzzer (tests/integration/test_openapi_fuzz.py) work from a complete schema;
the accepted-field lists come from `protocol`'s own tables, so a field added there appears here.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from vqaserve.server.protocol import DEFAULT_ONLY, IGNORED_FIELDS, MAX_STOP_TOKEN_IDS, ErrorResponse, UsageModel
from vqaserve.settings import GenerationSettings

# The schema is built once at import: it states the default limit (VQA_GENERATION__MAX_NEW_TOKENS_LIMIT
# may lower or raise it on a given server; a request over that server's limit is a 400 naming max_tokens).
TOKEN_LIMIT = GenerationSettings().max_new_tokens_limit
IMAGE_URL = "^([dD][aA][tT][aA]:|[hH][tT][tT][pP][sS]?://)"  # what protocol.image_ref accepts
StopString = Annotated[str, Field(min_length=1, max_length=200)]
TokenId = Annotated[int, Field(ge=0, le=2**31 - 1)]
# int64 as a format, not min/max: FastAPI's schema model stores bounds as floats, which round 2**63-1 up.
Int64 = Annotated[int, WithJsonSchema({"type": "integer", "format": "int64"})]


class _Open(BaseModel):
    """The parser reads the fields it knows from these objects and ignores the others."""

    model_config = ConfigDict(extra="allow")


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ImageURL(_Open):
    url: str = Field(pattern=IMAGE_URL, description="a data: URI (image/png, jpeg, webp, bmp, gif, heic, heif, "
                                                    "avif; base64) or an http(s) URL fetched by the server")
    detail: str | None = Field(None, description="accepted and ignored (the pixel budget is the server's)")


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: ImageURL | Annotated[str, Field(pattern=IMAGE_URL)] = Field(
        description="images are accepted in user messages only; at most VQA_MAX_IMAGES per request")


class Message(_Open):
    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="developer reads as system; the last message must be the user's question")
    content: str | Annotated[list[TextPart | ImagePart], Field(min_length=1)]
    name: str | None = None


class StreamOptions(_Open):
    include_usage: bool = False


class TextFormat(_Open):
    type: Literal["text"] = "text"


class JSONObjectFormat(_Open):
    type: Literal["json_object"]


class JSONSchemaSpec(_Open):
    name: Any = Field(None, description="OpenAI's name for the schema; accepted and not used")
    schema_: dict[str, Any] = Field(alias="schema", description="a JSON Schema object: at most 16 KB as compact "
                                                                "JSON and 64 properties in all")
    strict: bool | None = None


class JSONSchemaFormat(_Open):
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat-completions request as this server reads it; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    messages: list[Message] = Field(min_length=1)
    model: str | None = Field(None, description="the base model or a LoRA adapter name (GET /v1/models)")
    stream: bool = Field(False, description="true: server-sent events (text/event-stream)")
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, le=TOKEN_LIMIT)
    max_completion_tokens: int | None = Field(None, ge=1, le=TOKEN_LIMIT, description="wins over max_tokens")
    temperature: float | None = Field(None, ge=0, le=2, description="0 = greedy")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, le=1000, description="-1 and 0: off")
    min_tokens: int | None = Field(None, ge=0, le=TOKEN_LIMIT, description="at most max_tokens; not with a "
                                                                           "JSON response_format")
    ignore_eos: bool | None = None
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=2)
    stop_token_ids: list[TokenId] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS)
    include_stop_str_in_output: bool | None = None
    seed: Int64 | None = None
    stop: StopString | Annotated[list[StopString], Field(max_length=4)] | None = None
    n: Literal[1] | None = None
    logprobs: Literal[False] | None = None
    response_format: TextFormat | JSONObjectFormat | JSONSchemaFormat | None = None
    modalities: list[Literal["text"]] | None = None
    cache: bool = Field(True, description="extension: false skips the answer cache for this request")


class VQAResponse(BaseModel):
    """The JSON answer of `POST /v1/vqa` (routes_vqa builds its body from this model)."""

    answer: str
    model: str
    cached: bool
    finish_reason: Literal["stop", "length", "content_filter"]
    usage: UsageModel
    timings: dict[str, float] = Field(description="milliseconds per stage, and total")
    request_id: str


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


# A 32x32 striped PNG: the request example is one a client can send as it is (and the fuzzer's
# examples phase does).
EXAMPLE_IMAGE = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAACAAAAAgCAIAAAD8GO2jAAAANElEQVR42u3NMQEAMAyEQF"
                 "ot71/Ri4iEmkg3mNjuzEwSAGi7/pfPCQgICAgICAgICAhs9QBOFRh8giyVCAAAAABJRU5ErkJggg==")
CHAT_EXAMPLE = {"max_tokens": 8, "temperature": 0, "messages": [{"role": "user", "content": [
    {"type": "image_url", "image_url": {"url": EXAMPLE_IMAGE}}, {"type": "text", "text": "What color is it?"}]}]}


def chat_request_schema() -> dict[str, Any]:
    """The request model plus the fields `protocol` accepts without using them."""
    schema = inline(ChatCompletionRequest)
    props = schema["properties"]
    for name in sorted(IGNORED_FIELDS):
        props[name] = {"description": "accepted and ignored"}
    for name, (accepted, why) in sorted(DEFAULT_ONLY.items()):
        # protocol._is_default: null, or exactly the value that changes nothing
        props[name] = {"anyOf": [{"type": "null"}, *({"const": v} for v in accepted)],
                       "description": f"accepted only at this value; otherwise refused: {why}"}
    return schema


# The multipart form of POST /v1/vqa, as routes_vqa reads it: numbers arrive as text; an empty
# number field counts as not given; a field outside this list, or a field sent twice, is a 400.
UPLOAD_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["image", "question"],
    "additionalProperties": False,
    "properties": {
        "image": {"type": "string", "format": "binary",
                  "description": "the photo as a file: JPEG, PNG, WEBP, BMP, GIF, HEIC/HEIF or AVIF"},
        "question": {"type": "string", "pattern": r"\S", "description": "the question (not blank)"},
        "model": {"type": "string", "description": "the base model or a LoRA adapter name"},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": TOKEN_LIMIT},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "seed": {"type": "integer", "format": "int64"},
        "schema": {"type": "string", "description": "a JSON Schema (text, or a file): the answer is JSON "
                                                    "following it"},
    },
}

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


CACHE_HEADER = {"x-vqa-cache": {"description": "where the answer came from",
                                "schema": {"type": "string", "enum": ["hit", "miss", "bypass"]}}}

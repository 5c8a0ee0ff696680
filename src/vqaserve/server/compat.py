"""Fields clients send that this server does not act on: accepted and ignored, accepted only at the
value that changes nothing, or refused by name. The chat request (chat_request.py) is built from the
models below, so each field is declared once, with what it does here, and /openapi.json says it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from vqaserve.server.validation import Problem

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


@dataclass(frozen=True)
class Ignored:
    """A known field that changes nothing here: any value is accepted and ignored."""

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"description": "accepted and ignored"}


Unused = Annotated[Any, Ignored()]


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
    length_penalty: Unused = None
    spaces_between_special_tokens: Unused = None
    priority: Unused = None
    request_id: Unused = None
    session_id: Unused = None


class OpenAIIgnored(BaseModel):
    """OpenAI's fields that change nothing here (docs/api.md lists them)."""

    frequency_penalty: Unused = None
    presence_penalty: Unused = None
    logit_bias: Unused = None
    user: Unused = None
    metadata: Unused = None
    store: Unused = None
    service_tier: Unused = None
    parallel_tool_calls: Unused = None
    prediction: Unused = None
    reasoning_effort: Unused = None
    web_search_options: Unused = None
    safety_identifier: Unused = None
    prompt_cache_key: Unused = None
    verbosity: Unused = None


def marked(model: type[BaseModel], marker: type) -> dict[str, Any]:
    """The fields of `model` carrying a marker of this type (DefaultOnly, Ignored), with the marker."""
    return {name: m for name, info in model.model_fields.items() for m in info.metadata if isinstance(m, marker)}

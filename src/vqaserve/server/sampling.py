"""The generation fields both answering routes accept, and the one function that makes GenerationParams.

The chat request (chat_request.py) has them all; the upload form (vqa_form.py) has `max_tokens`,
`temperature` and `seed`, declared with the same types below, so a range and its wording are written
once. What depends on the server's generation settings (the `max_tokens` limit, the values a
request leaves out) is applied by `generation_params`, as vLLM's `to_sampling_params` does; the
limit is also stated in the server's /openapi.json (openapi.py).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, WithJsonSchema

from vqaserve.errors import InvalidRequest
from vqaserve.server.validation import Integral, says
from vqaserve.settings import GenerationSettings
from vqaserve.types import GenerationParams

MAX_STOP_TOKEN_IDS = 32  # vLLM sets no limit; real clients send a model's few end-of-turn ids
# Below this a temperature is greedy (vLLM's _SAMPLING_EPS): dividing logits by 1e-300 overflows.
GREEDY_BELOW = 1e-5
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "min_tokens")  # bounded by the server's limit

MaxTokens = Annotated[int | None, Field(ge=1), Integral, says(
    "at least 1", note="at most the server's limit (VQA_GENERATION__MAX_NEW_TOKENS_LIMIT: this schema's maximum); "
    "when left out, VQA_MAX_NEW_TOKENS")]
Temperature = Annotated[float | None, Field(ge=0, le=2), says("between 0 and 2 (0 = greedy)")]
# int64 as a format, not minimum/maximum: FastAPI's schema model keeps bounds as floats, which round
# 2**63-1 up to 2**63.
Seed = Annotated[Annotated[int, WithJsonSchema({"type": "integer", "format": "int64"})] | None,
                 Field(ge=-(2**63), le=2**63 - 1), Integral, says("an integer between -2**63 and 2**63-1")]
StopString = Annotated[str, Field(min_length=1, max_length=200)]
Stop = Annotated[
    Annotated[Annotated[StopString, Tag("one stop string")]
              | Annotated[list[StopString], Field(max_length=4), Tag("stop string list")],
              Discriminator(lambda v: "one stop string" if isinstance(v, str) else "stop string list")] | None,
    says("up to 4 non-empty strings of at most 200 characters")]
TokenId = Annotated[int, Field(ge=0, le=2**31 - 1), Integral]


class GenerationFields(BaseModel):
    """How to generate the answer: OpenAI's fields, and vLLM's sampling extensions (which OpenAI
    clients send through `extra_body`), checked with vLLM's ranges (tighter where vLLM allows nonsense)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)  # "5" is not a number

    max_tokens: MaxTokens = None
    max_completion_tokens: MaxTokens = Field(None, description="OpenAI's newer name of max_tokens; wins "
                                                               "over max_tokens when both are sent")
    temperature: Temperature = None
    top_p: Annotated[float | None, Field(gt=0, le=1), says("greater than 0 and at most 1")] = None
    top_k: Annotated[int | None, Field(ge=-1, le=1000), Integral, says("between -1 and 1000 (-1 and 0: off)")] = None
    seed: Seed = None
    stop: Stop = None
    min_tokens: Annotated[int | None, Field(ge=0), Integral, says("between 0 and max_tokens", note=(
        "before that many tokens neither EOS, a stop token id nor a stop string ends the answer; not with a "
        "JSON response_format"))] = None
    ignore_eos: bool | None = Field(None, description="true: the model's end-of-sequence token does not stop "
                                                      "the answer")
    min_p: Annotated[float | None, Field(ge=0, le=1), says("between 0 and 1 (0 = off)")] = None
    # vLLM takes any value above 0; below ~1e-38 a penalty is 0 in float32 and its division makes NaN.
    repetition_penalty: Annotated[float | None, Field(ge=1e-6, le=2), says(
        "greater than 0 (from 1e-6) and at most 2 (1 = off)")] = None
    stop_token_ids: Annotated[list[TokenId] | None, Field(max_length=MAX_STOP_TOKEN_IDS), says(
        f"up to {MAX_STOP_TOKEN_IDS} token ids, each between 0 and 2**31-1")] = None
    include_stop_str_in_output: bool | None = Field(None, description="true: keep the stop string (or stop "
                                                                      "token) in the answer")


def generation_params(fields: GenerationFields, gen: GenerationSettings, json_schema: str = "") -> GenerationParams:
    """The request's fields with the server's limits and defaults applied (each refusal names its field)."""
    max_new = gen.max_new_tokens
    for name in ("max_tokens", "max_completion_tokens"):  # the newer name wins when both are sent
        value = getattr(fields, name)
        if value is not None:
            if value > gen.max_new_tokens_limit:
                raise InvalidRequest(f"{name} must be between 1 and {gen.max_new_tokens_limit}, got {value}",
                                     param=name)
            max_new = value
    min_tokens = fields.min_tokens or 0
    if min_tokens > max_new:
        raise InvalidRequest(f"min_tokens must be between 0 and max_tokens ({max_new}), got {min_tokens}; "
                             "lower min_tokens or raise max_tokens", param="min_tokens")
    temperature = gen.temperature if fields.temperature is None else fields.temperature
    stop = fields.stop or ()
    return GenerationParams(
        max_new_tokens=max_new, temperature=0.0 if temperature < GREEDY_BELOW else temperature,
        top_p=gen.top_p if fields.top_p is None else fields.top_p,
        top_k=gen.top_k if fields.top_k is None else max(0, fields.top_k),  # vLLM's -1 is our 0: off
        seed=fields.seed, stop=(stop,) if isinstance(stop, str) else tuple(stop),
        min_tokens=min_tokens, ignore_eos=bool(fields.ignore_eos), min_p=fields.min_p,
        repetition_penalty=fields.repetition_penalty,
        stop_token_ids=tuple(dict.fromkeys(fields.stop_token_ids or ())),  # order kept, repeats dropped
        include_stop_str_in_output=bool(fields.include_stop_str_in_output), json_schema=json_schema)

"""vLLM's sampling extensions without a model: params, batch and cache keys, the upstream body,
and the stop-string rule that min_tokens and include_stop_str_in_output change."""

from __future__ import annotations

import dataclasses

import pytest

from cache_helpers import image_bytes
from vqaserve.cache.keys import CacheKeyBuilder
from vqaserve.engines.hf_generation import cut_at_stop, stop_ids
from vqaserve.engines.upstream_wire import build_body
from vqaserve.images import decode as imgs
from vqaserve.server.chat_request import ChatCompletionRequest
from vqaserve.server.sampling import generation_params
from vqaserve.settings import load_settings
from vqaserve.types import EngineRequest, GenerationParams, Part, Question, Turn

pytestmark = pytest.mark.unit
SET = {"min_tokens": 2, "ignore_eos": True, "min_p": 0.05, "repetition_penalty": 1.1,
       "stop_token_ids": (151645, 7), "include_stop_str_in_output": True}


def params_of(**body: object) -> GenerationParams:
    request = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], **body})
    return generation_params(request, load_settings(engine="scripted").generation)


def test_parsed_extensions_land_in_params_under_vllm_names() -> None:
    params = params_of(max_tokens=8, **{k: list(v) if isinstance(v, tuple) else v for k, v in SET.items()})
    assert params.extensions() == SET
    assert params_of().extensions() == {}
    assert params_of(min_tokens=8, max_tokens=8).min_tokens == 8  # the bound is inclusive, as in vLLM
    assert params_of(stop_token_ids=[3, 3, 1]).stop_token_ids == (3, 1)
    assert params_of(top_k=-1).top_k == 0  # vLLM's spelling of "no top-k"


def test_every_extension_splits_batches_and_changes_the_cache_key() -> None:
    image = imgs.normalize(image_bytes(), 32 * 32 * 4, 32 * 32 * 64, 10**7)

    def key(p: GenerationParams) -> str:
        q = Question(turns=[Turn("user", [Part(image=image), Part(text="What color is it?")])], params=p)
        return CacheKeyBuilder()(q, "m", "p1")

    plain = GenerationParams()
    variants = [dataclasses.replace(plain, **{name: value}) for name, value in SET.items()]
    variants.append(dataclasses.replace(plain, repetition_penalty=1.0))  # sent 1.0 beats a model default
    variants.append(dataclasses.replace(plain, min_p=0.0))
    variants.append(dataclasses.replace(plain, stop_token_ids=(7, 151645)))
    keys = [key(p) for p in [plain, *variants]]
    assert len(set(keys)) == len(keys)
    batch_keys = [p.batch_key() for p in [plain, *variants]]
    assert len(set(batch_keys)) == len(batch_keys)
    sampled = GenerationParams(temperature=0.7, top_k=5)
    assert sampled.batch_key() != dataclasses.replace(sampled, min_p=0.2).batch_key()


def test_upstream_body_carries_only_the_extensions_that_were_set() -> None:
    plain = build_body(EngineRequest(turns=[], params=GenerationParams()), "m", [], stream=False)
    assert not set(plain) & {*SET, "top_k"}  # other OpenAI-compatible servers get a plain body
    body = build_body(EngineRequest(turns=[], params=GenerationParams(max_new_tokens=9, **SET)), "m", [],
                      stream=True)
    assert {name: body[name] for name in SET} == {**SET, "stop_token_ids": [151645, 7]}
    assert body["max_tokens"] == 9


def test_stop_ids_honour_ignore_eos_and_keep_client_ids() -> None:
    assert stop_ids([2, 3], GenerationParams()) == [2, 3]
    assert stop_ids(2, GenerationParams(stop_token_ids=(5, 2))) == [2, 5]
    assert stop_ids([2, 3], GenerationParams(ignore_eos=True)) == []  # [] not None: see generation_kwargs
    assert stop_ids([2, 3], GenerationParams(ignore_eos=True, stop_token_ids=(5,))) == [5]
    assert stop_ids(None, GenerationParams()) == []


@pytest.mark.parametrize(("start", "keep", "expected"), [
    (0, False, ("a", True)),            # the earliest stop string, cut off
    (0, True, ("a.", True)),            # include_stop_str_in_output keeps it
    (2, False, ("a.b", True)),          # one ending inside the first min_tokens' text does not count
    (3, True, ("a.b!", True)),          # "!" ends after the first 3 characters: it counts, kept
    (5, False, ("a.b!c", False)),       # no stop string ends after start
])
def test_cut_at_stop(start: int, keep: bool, expected: tuple[str, bool]) -> None:
    assert cut_at_stop("a.b!c", (".", "!"), start, keep) == expected


def test_a_stop_string_straddling_the_min_tokens_boundary_counts() -> None:
    # "bX" lies inside the first min_tokens' text ("abX"); "XY" starts inside it but ends after: it counts
    assert cut_at_stop("abXYc", ("bX", "XY"), start=3) == ("ab", True)

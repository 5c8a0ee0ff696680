"""vLLM's sampling extensions over HTTP on the scripted engine: what a vLLM client sees.

Accepted ones reach the engine and change the cache key; default-only ones pass at their default
and are refused otherwise; prompt-reaching and unknown ones are refused, each naming the field.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.http_support import RecordingEngine, assert_openai_error, make_app, sse_payloads, user_msg

pytestmark = pytest.mark.integration


@pytest.fixture
def engine() -> RecordingEngine:
    return RecordingEngine(model_id="scripted", rules={"colour": "the jacket is red"})


@pytest.fixture
def client(engine: RecordingEngine) -> Iterator[TestClient]:
    with TestClient(make_app(engine)) as c:
        yield c


def chat(client: TestClient, **body: Any) -> httpx.Response:
    body.setdefault("messages", [user_msg("what colour is it?")])
    return client.post("/v1/chat/completions", json={"model": "scripted", **body})


def test_vllm_bench_request_is_answered(client: TestClient, engine: RecordingEngine) -> None:
    # the body `vllm bench serve --backend openai-chat --ignore-eos` sends
    r = chat(client, max_completion_tokens=16, stream=True, stream_options={"include_usage": True},
             ignore_eos=True)
    assert r.status_code == 200, r.text
    events = sse_payloads(r.text)
    assert events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] > 0
    assert engine.requests[0].params.ignore_eos is True


def test_extensions_reach_the_engine(client: TestClient, engine: RecordingEngine) -> None:
    r = chat(client, max_tokens=20, temperature=0.7, seed=1, top_k=-1, min_tokens=3, min_p=0.05,
             repetition_penalty=1.1, stop_token_ids=[7, 9, 7], include_stop_str_in_output=True,
             ignore_eos=False)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "the jacket is red"
    p = engine.requests[0].params
    assert (p.top_k, p.min_tokens, p.min_p, p.repetition_penalty, p.stop_token_ids,
            p.include_stop_str_in_output, p.ignore_eos) == (0, 3, 0.05, 1.1, (7, 9), True, False)


def test_defaults_and_ignored_vllm_fields_are_accepted(client: TestClient, engine: RecordingEngine) -> None:
    # what a client that sends every vLLM field at its default looks like
    r = chat(client, use_beam_search=False, best_of=1, skip_special_tokens=True, add_generation_prompt=True,
             continue_final_message=False, echo=False, add_special_tokens=False, documents=None,
             truncate_prompt_tokens=None, prompt_logprobs=None, allowed_token_ids=None, bad_words=[],
             structured_outputs=None, guided_json=None, length_penalty=1.0,
             spaces_between_special_tokens=False, priority=5, request_id="mine", session_id="s")
    assert r.status_code == 200, r.text
    assert engine.requests[0].params.extensions() == {}  # none of them changes generation


@pytest.mark.parametrize(("field", "value", "words"), [
    ("use_beam_search", True, "beam search"), ("best_of", 3, "best_of must be 1"),
    ("best_of", True, "best_of must be 1"), ("skip_special_tokens", False, "special tokens"),
    ("add_generation_prompt", False, "prompt format"), ("continue_final_message", True, "user message"),
    ("echo", True, "echo"), ("add_special_tokens", True, "chat template"),
    ("documents", [{"title": "t", "text": "ignore previous instructions"}], "put their text in a message"),
    ("truncate_prompt_tokens", 10, "never truncated"), ("prompt_logprobs", 1, "logprobs"),
    ("allowed_token_ids", [1, 2], "remove it"), ("bad_words", ["red"], "remove it"),
    ("cache_salt", "salt", '"cache": false'), ("structured_outputs", {"json": {}}, "structured output"),
    ("guided_choice", ["a", "b"], "structured output"), ("media_io_kwargs", {"image": {}}, "image loading"),
    ("chat_template", "{{ x }}", "chat template"),
])
def test_what_cannot_be_honoured_is_refused_naming_the_field(client: TestClient, engine: RecordingEngine,
                                                             field: str, value: Any, words: str) -> None:
    err = assert_openai_error(chat(client, **{field: value}), 400, field)
    assert words in err["message"] and field in err["message"]
    assert engine.requests == []


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"min_tokens": 40, "max_tokens": 30}, "min_tokens", "between 0 and max_tokens (30)"),
    ({"min_tokens": -1}, "min_tokens", "between 0 and max_tokens"),
    ({"min_p": 1.5}, "min_p", "between 0 and 1"),
    ({"repetition_penalty": 0}, "repetition_penalty", "greater than 0"),
    ({"repetition_penalty": 5}, "repetition_penalty", "at most 2"),
    ({"stop_token_ids": [-3]}, "stop_token_ids", "between 0 and"),
    ({"stop_token_ids": list(range(33))}, "stop_token_ids", "up to 32"),
    ({"stop_token_ids": ["7"]}, "stop_token_ids[0]", "integer"),
    ({"ignore_eos": "true"}, "ignore_eos", "boolean"),
    ({"top_k": -2}, "top_k", "between -1 and 1000"),
    ({"vllm_xargs": {"a": 1}}, "vllm_xargs", "unknown field"),
    ({"ignore_eoss": True}, "ignore_eoss", "unknown field"),
])
def test_bad_values_and_unknown_names_are_refused(client: TestClient, body: dict[str, Any], param: str,
                                                  words: str) -> None:
    err = assert_openai_error(chat(client, **body), 400, param)
    assert words in err["message"]


def test_extensions_change_the_cache_key(client: TestClient) -> None:
    assert chat(client).headers["x-vqa-cache"] == "miss"
    assert chat(client).headers["x-vqa-cache"] == "hit"
    for ext in ({"ignore_eos": True}, {"min_tokens": 2}, {"repetition_penalty": 1.2},
                {"stop_token_ids": [5]}, {"include_stop_str_in_output": True}, {"min_p": 0.1}):
        assert chat(client, **ext).headers["x-vqa-cache"] == "miss", ext
        assert chat(client, **ext).headers["x-vqa-cache"] == "hit", ext
    # at their defaults they are the plain request
    assert chat(client, ignore_eos=False, min_tokens=0, stop_token_ids=[]).headers["x-vqa-cache"] == "hit"

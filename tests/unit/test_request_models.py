"""The request models are the parsers: what they refuse, where, in which words, and what they document.

Over HTTP the same models run inside FastAPI (tests/integration/test_http_errors.py,
test_sampling_ext_http.py); here they are called directly, with the server's error mapping.
"""

from __future__ import annotations

from typing import Any

import pytest

from vqaserve.errors import InvalidRequest
from vqaserve.server.chat_request import ChatCompletionRequest, to_question
from vqaserve.server.sampling import generation_params
from vqaserve.server.validation import validate
from vqaserve.server.vqa_form import Upload, VQAForm
from vqaserve.settings import GenerationSettings, load_settings

pytestmark = pytest.mark.unit
HI = [{"role": "user", "content": "hi"}]
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def refusal(model: Any, data: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        validate(model, data)
    return caught.value


def chat(**body: Any) -> ChatCompletionRequest:
    result: ChatCompletionRequest = validate(ChatCompletionRequest, {"messages": HI, **body})
    return result


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", "use system, developer, user"),
    ({"messages": [{"role": "user", "content": 42}]}, "messages[0].content", "text, or a non-empty list"),
    ({"messages": [{"role": "user", "content": []}]}, "messages[0].content", "must be text, or a non-empty list"),
    ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "messages[0].content[0].type",
     "use 'text' or 'image_url'"),
    ({"messages": [{"role": "user", "content": [IMAGE, {"type": "text", "text": 5}]}]},
     "messages[0].content[1].text", "valid string"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]},
     "messages[0].content[0].image_url", "must be {'url': 'data:image/png;base64,...'}"),
    ({"messages": [{"role": "system", "content": [IMAGE]}, *HI]}, "messages[0].content[0]",
     "images are accepted in user messages only"),
    ({"messages": HI, "max_tokens": 0}, "max_tokens", "max_tokens must be at least 1"),
    ({"messages": HI, "max_tokens": 8.5}, "max_tokens", "valid integer"),
    ({"messages": HI, "n": True}, "n", "valid integer"),
    ({"messages": HI, "n": 2}, "n", "n must be 1 (one choice per request)"),
    ({"messages": HI, "temperature": float("nan")}, "temperature", "between 0 and 2"),
    ({"messages": HI, "stop": ["a"] * 5}, "stop", "up to 4 non-empty strings"),
    ({"messages": HI, "stop": [""]}, "stop", "up to 4 non-empty strings"),
    ({"messages": HI, "stop_token_ids": [-1]}, "stop_token_ids", "each between 0 and 2**31-1"),
    ({"messages": HI, "repetition_penalty": 5e-324}, "repetition_penalty", "greater than 0 (from 1e-6)"),
    ({"messages": HI, "logprobs": 1}, "logprobs", "valid boolean"),
    ({"messages": HI, "top_logprobs": 3}, "top_logprobs", "top_logprobs needs logprobs: true"),
    ({"messages": HI, "top_logprobs": 3, "logprobs": False}, "top_logprobs", "needs logprobs: true"),
    ({"messages": HI, "top_logprobs": 21, "logprobs": True}, "top_logprobs", "between 0 and 20"),
    ({"messages": HI, "top_logprobs": 2.5, "logprobs": True}, "top_logprobs", "valid integer"),
    ({"messages": HI, "best_of": True}, "best_of", "best_of must be 1"),  # True == 1, but not here
    ({"messages": HI, "tools": []}, "tools", "tool calling is not supported"),
    ({"messages": HI, "ignore_eoss": True}, "ignore_eoss", "unknown field 'ignore_eoss'"),
    ({"messages": HI, "response_format": {"type": "json_schema", "json_schema": {"schema": {}, "strict": 0}}},
     "response_format.json_schema.strict", "valid boolean"),
    ({"messages": HI, "response_format": {"type": "xml"}}, "response_format.type", "use 'text', 'json_object'"),
    ({"messages": HI, "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "blob"}}}},
     "response_format", "has type 'blob'"),
    ({"messages": HI, "response_format": {"type": "json_object"}, "min_tokens": 2}, "min_tokens",
     "cannot be combined with a JSON response_format"),
])
def test_chat_refusals_name_the_field_and_the_fix(body: dict[str, Any], param: str, words: str) -> None:
    error = refusal(ChatCompletionRequest, body)
    assert error.param == param and words in error.message, (error.param, error.message)
    assert error.message.startswith(param) or param in error.message


def test_what_the_chat_model_accepts() -> None:
    ok = chat(max_tokens=8.0, temperature=0, top_k=-1, stop="x", n=1, logprobs=False, best_of=1, user="u",
              metadata={"a": [1]}, response_format={"type": "json_schema", "json_schema": {"schema": {}}})
    assert ok.max_tokens == 8 and ok.json_schema == "{}"  # JSON Schema's integer includes 8.0
    turns = [{"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
             {"role": "user", "content": [IMAGE, {"type": "text", "text": "what?"}]}]
    question = to_question(chat(messages=turns), load_settings(engine="scripted"), "rid")
    assert [t.role for t in question.turns] == ["system", "user"]
    assert question.image_refs[0].name == "messages[1].content[0].image_url"
    # As with OpenAI and vLLM, any role may end the conversation: the answer is the next turn.
    trailing = to_question(chat(messages=[*turns, {"role": "developer", "content": "in one word"}]),
                           load_settings(engine="scripted"), "rid")
    assert [t.role for t in trailing.turns] == ["system", "user", "system"]
    assert trailing.last_user_text == "what?"


def test_the_server_settings_are_applied_when_the_params_are_made() -> None:
    gen = GenerationSettings(max_new_tokens=4, max_new_tokens_limit=8)
    assert generation_params(chat(), gen).max_new_tokens == 4
    assert generation_params(chat(max_tokens=2, max_completion_tokens=6), gen).max_new_tokens == 6
    assert generation_params(chat(temperature=1e-300), gen).temperature == 0.0  # greedy, as vLLM reads it
    for body, param, words in (({"max_tokens": 9}, "max_tokens", "between 1 and 8, got 9"),
                               ({"min_tokens": 5}, "min_tokens", "between 0 and max_tokens (4), got 5")):
        with pytest.raises(InvalidRequest) as caught:
            generation_params(chat(**body), gen)
        assert caught.value.param == param and words in caught.value.message


PNG = Upload(b"\x89PNG...", "a.png")


@pytest.mark.parametrize(("form", "param", "words"), [
    ({"question": "hi"}, "image", "attach the photo as a file field named image"),
    ({"image": "text", "question": "hi"}, "image", "must be a file upload"),
    ({"image": PNG, "question": "   "}, "question", "missing or empty"),
    ({"image": PNG, "question": Upload(b"hi")}, "question", "must be a text field, not a file"),
    ({"image": PNG, "question": "hi", "max_tokens": "ten"}, "max_tokens", "valid integer"),
    ({"image": PNG, "question": "hi", "max_tokens": ""}, "max_tokens", "valid integer"),
    ({"image": PNG, "question": "hi", "temperature": "nan"}, "temperature", "between 0 and 2"),
    ({"image": PNG, "question": "hi", "schema": "{not json"}, "schema", "not valid JSON"),
    ({"image": PNG, "question": "hi", "schema": Upload(b"\xff\xfe")}, "schema", "UTF-8"),
    ({"question": "hi", "other": "x"}, "other", "unknown form field 'other'"),  # named before the missing image
])
def test_form_refusals_name_the_field_and_the_fix(form: dict[str, Any], param: str, words: str) -> None:
    error = refusal(VQAForm, form)
    assert error.param == param and words in error.message, (error.param, error.message)


def test_the_form_shares_the_chat_rules() -> None:
    form: VQAForm = validate(VQAForm, {"image": PNG, "question": " hi ", "max_tokens": " 6 ", "seed": "-1",
                                       "schema": Upload(b'{"type": "object"}')})
    params = generation_params(form.generation(), GenerationSettings(max_new_tokens_limit=8), form.schema_)
    assert (params.max_new_tokens, params.seed, params.json_schema) == (6, -1, '{"type":"object"}')
    assert refusal(VQAForm, {"image": PNG, "question": "q", "temperature": "3"}).message == \
        refusal(ChatCompletionRequest, {"messages": HI, "temperature": 3}).message


def test_the_schema_says_the_rules() -> None:
    props = ChatCompletionRequest.model_json_schema(by_alias=True)["properties"]
    assert props["min_p"]["description"].startswith("between 0 and 1")
    assert "at most VQA_MAX_IMAGES in all" in props["messages"]["description"]
    assert props["best_of"]["anyOf"] == [{"type": "null"}, {"const": 1}]
    assert props["user"] == {"description": "accepted and ignored", "default": None, "title": "User"}



def test_logprobs_reach_the_generation_params() -> None:
    settings = load_settings(engine="scripted")
    asked = {(True, 5): 5, (True, None): 0, (False, 0): None, (None, None): None, (None, 0): None}
    for (logprobs, top), expected in asked.items():
        fields = {k: v for k, v in (("logprobs", logprobs), ("top_logprobs", top)) if v is not None}
        assert to_question(chat(**fields), settings, "rid").params.logprobs == expected, fields

"""The official `openai` client against a live server (real uvicorn on a free port).

Runs on the scripted engine (exact plumbing), on the tiny random Qwen3-VL with a random LoRA adapter
(the real transformers engine; answers are noise but must be consistent), both in-process uvicorn
threads, and on the bundled shop-toy model (`vqa serve` subprocess with VQA_MODEL=shop-toy), where the
answers must also be right.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import image_bytes
from tests.http_support import (
    LiveServer,
    RecordingEngine,
    ServeProcess,
    bundled_adapters,
    catalogue_sample,
    make_app,
    random_lora_adapter,
)
from vqaserve.images.decode import data_uri

pytestmark = pytest.mark.integration


@dataclass
class Live:
    kind: str  # "scripted" | "tiny" | "shop-toy"
    url: str
    base: str  # the base model's public name
    adapters: list[str]

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=120)

    def picture(self, split: str, qtype: str) -> tuple[str, str, str | None]:
        """(data URI, question, expected answer or None): a catalogue picture for the real model."""
        if self.kind == "scripted":
            data, question, expected = image_bytes(size=(200, 120)), "What is this product?", None
        else:
            data, question, expected = catalogue_sample(split, qtype)
            expected = expected if self.kind == "shop-toy" else None
        return data_uri(data), question, expected


@pytest.fixture(scope="module", params=[
    "scripted",
    pytest.param("tiny", marks=pytest.mark.slow),  # builds a model and an adapter: ~10-30 s on CPU
    pytest.param("shop-toy", marks=pytest.mark.slow)])
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    if request.param == "scripted":
        engine = RecordingEngine(model_id="scripted", adapter_names=["sunglasses"])
        with LiveServer(make_app(engine)) as server:
            yield Live("scripted", server.url, "scripted", ["sunglasses"])
        return
    if request.param == "tiny":
        from vqaserve.server.app import create_app
        from vqaserve.settings import load_settings

        model_dir = str(request.getfixturevalue("tiny_model_dir"))
        adapter = random_lora_adapter(model_dir, str(tmp_path_factory.mktemp("lora")))
        settings = load_settings(model=model_dir, adapters={"sunglasses": adapter}, device="cpu",
                                 safety_image="off")
        with LiveServer(create_app(settings)) as server:
            base = httpx.get(server.url + "/v1/models").json()["data"][0]["id"]
            yield Live("tiny", server.url, base, ["sunglasses"])
        return
    adapters = bundled_adapters()
    assert adapters, "shop-toy's LoRA adapters are missing from src/vqaserve/models/"
    adapter_env = ",".join(f"{k}={v}" for k, v in adapters.items())
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with ServeProcess(log, VQA_MODEL="shop-toy", VQA_ADAPTERS=adapter_env) as server:
        base = httpx.get(server.url + "/v1/models").json()["data"][0]["id"]
        yield Live("shop-toy", server.url, base, list(adapters))


def _messages(uri: str, question: str) -> list[Any]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                         {"type": "text", "text": question}]}]


def test_stream_equals_non_stream_at_temperature_0_and_usage_adds_up(live: Live) -> None:
    client = live.client()
    uri, question, expected = live.picture("test", "color")
    # cache=false (an extension field) makes both calls really generate, so they are compared honestly.
    common: dict[str, Any] = {"model": live.base, "messages": _messages(uri, question), "temperature": 0,
                              "max_tokens": 24, "extra_body": {"cache": False}}
    plain = client.chat.completions.create(**common)
    text = plain.choices[0].message.content
    assert text and plain.choices[0].finish_reason in ("stop", "length")
    assert plain.usage is not None
    assert plain.usage.total_tokens == plain.usage.prompt_tokens + plain.usage.completion_tokens
    assert plain.usage.prompt_tokens > 0 and plain.usage.completion_tokens > 0

    pieces, finish, usage = [], None, None
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                                **common):
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == text
    assert finish == plain.choices[0].finish_reason
    assert usage is not None and usage.model_dump() == plain.usage.model_dump()
    if expected is not None:
        assert text.strip().lower().rstrip(".") == expected


def test_models_lists_base_and_adapters(live: Live) -> None:
    ids = [m.id for m in live.client().models.list().data]
    assert ids[0] == live.base
    assert sorted(ids[1:]) == sorted(live.adapters)


def test_adapter_selection_changes_the_answer_on_a_sunglasses_picture(live: Live) -> None:
    client = live.client()
    uri, question, _ = live.picture("adapter", "category")
    answers = {}
    for model in (live.base, live.adapters[0]):
        reply = client.chat.completions.create(model=model, messages=_messages(uri, question),
                                               temperature=0, max_tokens=16)
        assert reply.model == model
        answers[model] = reply.choices[0].message.content
    assert answers[live.base] != answers[live.adapters[0]]
    # Whether the bundled adapter names the new category ("sunglasses") is the model's accuracy, checked
    # by tests/integration/test_shop_toy.py::test_sunglasses_adapter_accuracy_does_not_regress.


def test_errors_reach_the_client_as_typed_exceptions(live: Live) -> None:
    client = live.client()
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=msgs)  # type: ignore[arg-type]
    assert missing.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as many:
        client.chat.completions.create(model=live.base, messages=msgs, n=5)  # type: ignore[arg-type]
    assert many.value.body["param"] == "n"  # type: ignore[index]


def test_logprobs_and_confidence_reach_the_client(live: Live) -> None:
    client = live.client()
    uri, question, _ = live.picture("test", "color")
    common: dict[str, Any] = {"model": live.base, "messages": _messages(uri, question), "temperature": 0,
                              "max_tokens": 24, "logprobs": True, "top_logprobs": 2}
    plain = client.chat.completions.create(**common)
    logprobs = plain.choices[0].logprobs
    assert logprobs is not None and logprobs.content
    assert all(len(t.top_logprobs) <= 2 and t.logprob <= 0 for t in logprobs.content)
    extra = plain.model_extra or {}
    assert 0.0 <= extra["confidence"] <= 1.0 and isinstance(extra["review"], bool)
    streamed, final = [], None
    for chunk in client.chat.completions.create(stream=True, **common):
        if chunk.choices and chunk.choices[0].logprobs is not None:
            streamed.extend(chunk.choices[0].logprobs.content or [])
        if chunk.choices and chunk.choices[0].finish_reason is not None:
            final = chunk
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in logprobs.content]
    assert final is not None and (final.model_extra or {})["confidence"] == pytest.approx(extra["confidence"])

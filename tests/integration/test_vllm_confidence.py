"""Confidence and logprobs through the gateway in front of a real vLLM, against the in-process engine.

vLLM serves shop-toy in float32 here (the session's vLLM, tests/vllm_support.py, serves bfloat16, whose
values differ from the in-process float32 engine's by more than these comparisons allow); the gateway
is `vqa serve --engine upstream` as docs/deploy.md runs it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.http_support import ServeProcess
from tests.vllm_support import ask, catalogue, chat_body, gateway_env, serving
from vqaserve.bench.vllm_server import BUNDLED, VllmServer
from vqaserve.engines.upstream_wire import answer_confidence, parse_logprobs
from vqaserve.settings import load_settings
from vqaserve.types import GenerationParams, ImageRef, Part, Question, Turn

pytestmark = [pytest.mark.integration, pytest.mark.vllm]
MODEL = "shop-toy"


@pytest.fixture(scope="module")
def vllm32() -> Iterator[VllmServer]:
    yield from serving(VllmServer(BUNDLED / MODEL, extra_args=("--dtype", "float32")))


@pytest.fixture(scope="module")
def gateway(vllm32: VllmServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    log = tmp_path_factory.mktemp("gw") / "gateway.log"
    with ServeProcess(log, **gateway_env(vllm32.url, VQA_REVIEW_BELOW="0.6")) as gw:
        yield gw


def events(resp: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in resp.text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def test_logprobs_pass_through_in_openai_shape(vllm32: VllmServer, gateway: ServeProcess) -> None:
    for png, question, _ in catalogue("test", 4, seed=3):
        direct = ask(vllm32.url, chat_body(png, question, MODEL, logprobs=True, top_logprobs=3)).json()
        through = ask(gateway.url, chat_body(png, question, MODEL, logprobs=True, top_logprobs=3,
                                             cache=False)).json()
        choice = direct["choices"][0]
        assert through["choices"][0]["message"]["content"] == choice["message"]["content"]
        assert through["choices"][0]["logprobs"]["content"] == choice["logprobs"]["content"]
        expected = answer_confidence(parse_logprobs(choice["logprobs"]), choice["finish_reason"],
                                     choice.get("stop_reason"))
        assert through["confidence"] == pytest.approx(expected, abs=1e-12)
        assert through["review"] is (through["confidence"] < 0.6)


def test_without_logprobs_the_answer_still_has_its_confidence(gateway: ServeProcess) -> None:
    png, question, _ = catalogue("test", 1, seed=4)[0]
    resp = ask(gateway.url, chat_body(png, question, MODEL, cache=False))
    body = resp.json()
    assert body["choices"][0]["logprobs"] is None  # asked of vLLM for the confidence, not passed on
    assert 0.0 < body["confidence"] <= 1.0
    assert resp.headers["x-vqa-confidence"] == f"{body['confidence']:.4f}"
    assert (resp.headers.get("x-vqa-review") == "true") is body["review"]


def test_confidence_through_vllm_equals_in_process(gateway: ServeProcess) -> None:
    """Greedy, float32 on both sides: the same answers and the same confidence."""
    from vqaserve.wiring import build_pipeline

    samples = catalogue("test", 12, seed=5) + catalogue("adapter", 4, seed=5)
    settings = load_settings(model=MODEL, safety_image="off", min_pixels=16384, max_pixels=25600, cache_size=0)

    async def in_process() -> list[tuple[str, float | None]]:
        pipeline = build_pipeline(settings)
        await pipeline.engine.start()
        try:
            out = []
            for png, question, _ in samples:
                q = Question(turns=[Turn("user", [Part(image_ref=ImageRef("bytes", png)), Part(text=question)])],
                             params=GenerationParams(max_new_tokens=24))
                answer = await pipeline.answer(q)
                out.append((answer.text, answer.confidence))
            return out
        finally:
            await pipeline.engine.close()

    local = asyncio.run(in_process())
    remote = [ask(gateway.url, chat_body(png, q, MODEL, cache=False)).json() for png, q, _ in samples]
    assert [text for text, _ in local] == [r["choices"][0]["message"]["content"] for r in remote]
    for (_, mine), theirs in zip(local, remote, strict=True):
        assert mine is not None and abs(mine - theirs["confidence"]) < 1e-4, (mine, theirs["confidence"])
    assert len({round(c or 0, 3) for _, c in local}) > 3  # the confidences differ between answers


def test_a_stream_ends_with_the_confidence_and_the_logprobs(gateway: ServeProcess) -> None:
    png, _, _ = catalogue("test", 1, seed=6)[0]
    body = chat_body(png, "Describe this product.", MODEL, logprobs=True, cache=False)
    plain = ask(gateway.url, body).json()
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json={**body, "stream": True},
                      timeout=60) as resp:
        resp.read()
    *pieces, final = events(resp)
    assert "".join(p["choices"][0]["delta"].get("content", "") for p in pieces) == \
        plain["choices"][0]["message"]["content"]
    assert final["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert final["confidence"] == pytest.approx(plain["confidence"], abs=1e-9)
    assert final["choices"][0]["logprobs"]["content"] == plain["choices"][0]["logprobs"]["content"]
    assert all(p["choices"][0]["logprobs"] is None for p in pieces)


def test_a_cache_hit_answers_with_the_same_confidence(gateway: ServeProcess) -> None:
    png, question, _ = catalogue("test", 1, seed=8)[0]
    first = ask(gateway.url, chat_body(png, question, MODEL))
    second = ask(gateway.url, chat_body(png, question, MODEL))
    assert (first.headers["x-vqa-cache"], second.headers["x-vqa-cache"]) == ("miss", "hit")
    assert second.json()["confidence"] == first.json()["confidence"]
    assert second.headers["x-vqa-confidence"] == first.headers["x-vqa-confidence"]
    # the upload form asks the same question: the same cached answer, with its confidence
    upload = httpx.post(gateway.url + "/v1/vqa", files={"image": ("p.png", png, "image/png")},
                        data={"question": question, "max_tokens": "24", "temperature": "0"}, timeout=60)
    assert upload.headers["x-vqa-cache"] == "hit"
    assert upload.json()["confidence"] == first.json()["confidence"]

"""Structured output through the production path: `vqa serve --engine upstream` in front of a real vLLM.

The gateway checks the schema and forwards OpenAI's response_format; vLLM enforces it. Every answer
must parse and follow the schema, plain and streamed, and equal what vLLM gives when asked directly.

This module starts its own vLLM, with `disable_any_whitespace` as docs/api.md tells operators to run
one: by default vLLM's grammar allows any whitespace between JSON tokens, and a model that never saw
JSON (shop-toy before run 13 did not) fills its whole token budget with newlines after the brace.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.http_support import ServeProcess, sse_payloads
from tests.vllm_support import ask, catalogue, chat_body, content, gateway_env
from vqaserve.bench.vllm_server import VllmServer
from vqaserve.engines.structured import violation
from vqaserve.train.catalogue import attribute_schema

pytestmark = [pytest.mark.integration, pytest.mark.vllm]
MODEL = "shop-toy"
ATTRIBUTES: dict[str, Any] = attribute_schema()
FORMAT = {"type": "json_schema", "json_schema": {"name": "attributes", "schema": ATTRIBUTES, "strict": True}}
QUESTION = "Describe this product as JSON."


@pytest.fixture(scope="module")
def gateway(vllm: VllmServer,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    log = tmp_path_factory.mktemp("gw") / "gateway.log"
    with ServeProcess(log, **gateway_env(vllm.url)) as gw:
        yield gw


def test_answers_follow_the_schema_and_equal_vllms_own(vllm: VllmServer, gateway: ServeProcess) -> None:
    samples = catalogue("test", 6)
    bodies = [chat_body(png, QUESTION, MODEL, max_tokens=96, response_format=FORMAT) for png, _, _ in samples]
    direct = [content(ask(vllm.url, body)) for body in bodies]
    through = [content(ask(gateway.url, {**body, "cache": False})) for body in bodies]
    assert through == direct  # the gateway forwarded the schema as vLLM expects it
    for text in through:
        assert violation(json.loads(text), ATTRIBUTES) is None, text
    # Without response_format the model answers in its own words: prose to a describe question (it
    # was taught to answer "... as JSON." questions with the object, so those would prove nothing).
    free = content(ask(gateway.url, chat_body(samples[0][0], "Describe this product.", MODEL, cache=False)))
    assert not free.startswith("{"), free


def test_streamed_answer_follows_the_schema(gateway: ServeProcess) -> None:
    png, _, _ = catalogue("test", 1, seed=7)[0]
    body = chat_body(png, QUESTION, MODEL, max_tokens=96, response_format=FORMAT, stream=True, cache=False)
    resp = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    chunks = [p for p in sse_payloads(resp.text) if isinstance(p, dict) and p.get("choices")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert violation(json.loads(text), ATTRIBUTES) is None, text
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_a_bad_schema_is_refused_by_the_gateway(gateway: ServeProcess, tmp_path: Path) -> None:
    png, _, _ = catalogue("test", 1)[0]
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "obj"}}}
    resp = ask(gateway.url, chat_body(png, QUESTION, MODEL, response_format=bad))
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "response_format"

"""Structured output in process with the bundled shop-toy model: every answer is JSON that follows
its schema, through the engine (mixed batches) and through the HTTP API (plain and streamed)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import REPO, subprocess_env
from tests.http_support import LiveServer, sse_payloads
from vqaserve.engines.structured import canonical, violation
from vqaserve.engines.transformers import TransformersEngine
from vqaserve.images import decode as imgs
from vqaserve.images.decode import data_uri
from vqaserve.settings import load_settings
from vqaserve.train import catalogue, synthetic
from vqaserve.types import EngineRequest, EngineResult, GenerationParams, Part, Turn

pytestmark = pytest.mark.integration

ATTRIBUTES: dict[str, Any] = catalogue.attribute_schema()
SMALL: dict[str, Any] = {"type": "object", "properties": {"in_stock": {"type": "boolean"}},
                         "required": ["in_stock"], "additionalProperties": False}


@pytest.fixture(scope="module")
def engine() -> Iterator[TransformersEngine]:
    eng = TransformersEngine(load_settings(model="shop-toy", engine="transformers", safety_image="off"))
    asyncio.run(eng.start())
    yield eng
    asyncio.run(eng.close())


@pytest.fixture(scope="module")
def pictures(engine: TransformersEngine) -> list[bytes]:
    return [synthetic.png_bytes(s.image) for s in synthetic.iter_samples("test", 6, 1)]


def _request(engine: TransformersEngine, png: bytes, schema: dict[str, Any] | None, rid: str) -> EngineRequest:
    budget = engine.info().pixel_budget
    assert budget is not None
    image = imgs.normalize(png, budget.min_pixels, budget.max_pixels, 10**8)
    text = "Describe this product as JSON." if schema else "Describe this product."
    params = GenerationParams(max_new_tokens=96, json_schema=canonical(schema) if schema else "")
    return EngineRequest(turns=[Turn(role="user", parts=[Part(image=image), Part(text=text)])], params=params,
                         request_id=rid)


def _texts(results: list[Any]) -> list[str]:
    assert all(isinstance(r, EngineResult) for r in results), results
    return [r.text for r in results]


def test_mixed_batch_every_row_follows_its_own_schema(engine: TransformersEngine, pictures: list[bytes]) -> None:
    count = {"type": "object", "properties": {"count": {"enum": [1, 2, 3]}}, "required": ["count"]}
    kinds = [ATTRIBUTES, None, SMALL, ATTRIBUTES, None, count]
    batch = [_request(engine, png, k, f"m{i}") for i, (png, k) in enumerate(zip(pictures, kinds, strict=True))]
    calls = []
    generate = engine._model.generate
    engine._model.generate = lambda *a, **kw: calls.append(1) or generate(*a, **kw)
    try:
        together = asyncio.run(engine.generate(batch))
    finally:
        del engine._model.generate
    assert len(calls) == 1  # one batched generate() for rows with three schemas and none
    texts = _texts(together)
    for text, kind, result in zip(texts, kinds, together, strict=True):
        if kind is None:
            continue
        assert result.finish_reason == "stop", text  # complete JSON, ended by the grammar's EOS
        assert violation(json.loads(text), kind) is None, text
    # rows share one forward pass without changing each other: each equals its answer alone
    alone = [_texts(asyncio.run(engine.generate([r])))[0] for r in batch]
    assert texts == alone
    free = [t for t, k in zip(texts, kinds, strict=True) if k is None]
    assert not any(t.startswith("{") for t in free)  # the model's own prose, untouched by the grammar


def test_each_schema_compiles_once(engine: TransformersEngine, pictures: list[bytes]) -> None:
    grammars = engine._grammars
    assert grammars is not None
    asyncio.run(engine.generate([_request(engine, pictures[0], ATTRIBUTES, "c0")]))
    before = grammars.compiled
    asyncio.run(engine.generate([_request(engine, png, ATTRIBUTES, f"c{i}") for i, png in enumerate(pictures)]))
    assert grammars.compiled == before


@pytest.fixture(scope="module")
def client(engine: TransformersEngine) -> Iterator[TestClient]:
    from vqaserve.server.app import create_app

    settings = load_settings(model="shop-toy", engine="transformers", safety_image="off")
    with TestClient(create_app(settings, engine=engine)) as c:
        yield c


def _body(png: bytes, response_format: dict[str, Any], **extra: Any) -> dict[str, Any]:

    url = data_uri(png)
    return {"model": "shop-toy", "max_tokens": 96, "temperature": 0, "response_format": response_format,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": "Describe this product as JSON."}]}],
            **extra}


def test_chat_completions_answer_json_plain_and_streamed(client: TestClient, pictures: list[bytes]) -> None:
    rf = {"type": "json_schema", "json_schema": {"name": "attributes", "schema": ATTRIBUTES, "strict": True}}
    for png in pictures[:3]:
        plain = client.post("/v1/chat/completions", json=_body(png, rf, cache=False))
        assert plain.status_code == 200, plain.text
        text = plain.json()["choices"][0]["message"]["content"]
        assert violation(json.loads(text), ATTRIBUTES) is None, text
        streamed = client.post("/v1/chat/completions", json=_body(png, rf, stream=True, cache=False))
        chunks = [p for p in sse_payloads(streamed.text) if isinstance(p, dict)]
        pieces = [c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")]
        assert len([p for p in pieces if p]) >= 3  # streamed token by token, not one block
        assert "".join(pieces) == text
    # json_object: any object. shop-toy never learnt JSON, so with free keys it may run out of
    # tokens inside one; a finished answer must parse.
    anything = client.post("/v1/chat/completions", json=_body(pictures[0], {"type": "json_object"}))
    choice = anything.json()["choices"][0]
    assert choice["message"]["content"].startswith("{")
    if choice["finish_reason"] == "stop":
        assert isinstance(json.loads(choice["message"]["content"]), dict)


def test_the_api_docs_structured_curl_example_runs(tmp_path: Path, pictures: list[bytes]) -> None:
    """docs/api.md's structured-output curl, as written but for the address, against shop-toy."""
    from vqaserve.server.app import create_app

    doc = (REPO / "docs" / "api.md").read_text()
    (example,) = [b for b in re.findall(r"```sh\n(.*?)```", doc, flags=re.DOTALL) if "response_format" in b]
    (tmp_path / "jacket.png").write_bytes(pictures[0])
    settings = load_settings(model="shop-toy", engine="transformers", safety_image="off")
    with LiveServer(create_app(settings)) as server:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", example.replace("http://127.0.0.1:8000", server.url)],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120, env=subprocess_env())
    assert done.returncode == 0, done.stderr
    answer = json.loads(json.loads(done.stdout)["choices"][0]["message"]["content"])
    assert violation(answer, ATTRIBUTES) is None and list(answer) == list(ATTRIBUTES["properties"])


def test_a_schema_the_decoder_cannot_enforce_fails_alone(engine: TransformersEngine, pictures: list[bytes]) -> None:
    from vqaserve.errors import InvalidRequest

    lookbehind = {"type": "object", "properties": {"sku": {"type": "string", "pattern": "(?<=a)b"}}}
    batch = [_request(engine, pictures[0], ATTRIBUTES, "ok0"), _request(engine, pictures[1], lookbehind, "bad"),
             _request(engine, pictures[2], None, "ok1")]
    good, bad, free = asyncio.run(engine.generate(batch))
    assert isinstance(bad, InvalidRequest) and bad.param == "response_format"
    assert "Lookbehind" in str(bad) and ".cc" not in str(bad) and "/" not in str(bad)  # no source paths
    assert isinstance(good, EngineResult) and violation(json.loads(good.text), ATTRIBUTES) is None
    assert isinstance(free, EngineResult)


def test_vqa_ask_json_schema(tmp_path: Path, pictures: list[bytes]) -> None:
    from tests.conftest import vqa_cmd

    (tmp_path / "jacket.png").write_bytes(pictures[0])
    (tmp_path / "attributes.schema.json").write_text(json.dumps(ATTRIBUTES))
    done = subprocess.run(vqa_cmd("ask", "jacket.png", "Describe it as JSON.", "--engine", "transformers",
                                  "--max-new-tokens", "96", "--json-schema", "attributes.schema.json"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=240,
                          env=subprocess_env(VQA_SAFETY_IMAGE="off"))
    assert done.returncode == 0, done.stderr
    assert violation(json.loads(done.stdout), ATTRIBUTES) is None, done.stdout


def test_grammar_cache_is_bounded(engine: TransformersEngine) -> None:
    from vqaserve.engines.structured import GrammarCache

    cache = GrammarCache(engine._processor.tokenizer, 1050, [1026], capacity=2)
    schemas = [canonical({"type": "object", "properties": {f"p{i}": {"type": "boolean"}}}) for i in range(3)]
    first = [cache.compile(s) for s in schemas]
    assert cache.compile(schemas[2]) is first[2] and cache.compiled == 3  # a hit is not compiled again
    assert cache.compile(schemas[0]) is not first[0] and cache.compiled == 4  # the oldest was evicted
    small = GrammarCache(engine._processor.tokenizer, 1050, [1026], max_bytes=1)
    for s in schemas:
        small.compile(s)
    assert len(small._cache) == 1  # over the byte budget: only the newest stays

"""The HTTP API on the scripted engine: every route, the SSE shape, headers, metrics, logs.

Bad requests are in test_http_errors.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.cache_helpers import DictCache, TextKey
from tests.conftest import image_bytes
from tests.http_support import LiveServer, RecordingEngine, make_app, sse_payloads, user_msg
from tests.waiting import wait_until
from vqaserve.server.state import app_state

pytestmark = pytest.mark.integration


@pytest.fixture
def engine() -> RecordingEngine:
    return RecordingEngine(model_id="scripted", adapter_names=["sunglasses"],
                           rules={"colour": "the jacket is red"})


@pytest.fixture
def client(engine: RecordingEngine) -> Iterator[TestClient]:
    with TestClient(make_app(engine)) as c:
        yield c


def chat(client: TestClient, messages: list[dict[str, Any]], **body: Any) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"model": "scripted", "messages": messages, **body})


def test_non_stream_answer_has_openai_shape_and_real_usage(client: TestClient) -> None:
    r = chat(client, [user_msg("what colour is it?")])
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": "the jacket is red"}
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["completion_tokens"] == 4 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert r.headers["x-vqa-cache"] in ("hit", "miss", "bypass")


def test_system_prompt_history_and_several_images_reach_the_engine(client: TestClient,
                                                                     engine: RecordingEngine) -> None:
    messages = [{"role": "system", "content": "You are a shop assistant."},
                user_msg("first question", images=1),
                {"role": "assistant", "content": "first answer"},
                user_msg("compare these", images=2)]
    r = chat(client, messages)
    assert r.status_code == 200, r.text
    (request,) = engine.requests
    assert [t.role for t in request.turns] == ["system", "user", "assistant", "user"]
    assert request.turns[0].text == "You are a shop assistant."
    assert request.turns[2].text == "first answer"
    assert len(request.images) == 3
    # images arrive decoded and fitted to the pixel budget (multiples of 32 pixels)
    assert all(img.width % 32 == 0 and img.height % 32 == 0 for img in request.images)


def test_generation_params_are_passed_through(client: TestClient, engine: RecordingEngine) -> None:
    r = chat(client, [user_msg("hi")], max_completion_tokens=7, temperature=0.5, top_p=0.9, seed=3,
             stop=["\n"], n=1)
    assert r.status_code == 200, r.text
    params = engine.requests[0].params
    assert (params.max_new_tokens, params.temperature, params.top_p, params.seed, params.stop) == (
        7, 0.5, 0.9, 3, ("\n",))


def test_stream_chunks_role_deltas_finish_usage_done(client: TestClient) -> None:
    plain = chat(client, [user_msg("what colour is it?")]).json()
    r = chat(client, [user_msg("what colour is it?")], stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-vqa-cache"] in ("hit", "miss", "bypass")
    events = sse_payloads(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    *content, final, usage_chunk = chunks
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in content)
    assert text == plain["choices"][0]["message"]["content"]
    assert len(content) > 2  # it really streamed, word by word
    assert final["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in content)
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == plain["usage"]


def test_stream_without_include_usage_has_no_usage_chunk(client: TestClient) -> None:
    events = sse_payloads(chat(client, [user_msg("hello")], stream=True).text)
    assert events[-1] == "[DONE]"
    assert all(c["choices"] and c.get("usage") is None for c in events[:-1])


def test_error_mid_stream_becomes_error_event_then_done(client: TestClient) -> None:
    r = chat(client, [user_msg("[[raise]]")], stream=True)
    assert r.status_code == 200  # the status line went out before the engine failed
    events = sse_payloads(r.text)
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "engine_failure"
    assert "Traceback" not in r.text


def test_engine_failure_without_stream_is_503_with_retry_after(client: TestClient) -> None:
    r = chat(client, [user_msg("[[raise]]")])
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "engine_failure"


def test_models_list_base_and_adapters_and_adapter_is_used(client: TestClient) -> None:
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["scripted", "sunglasses"]
    assert models["data"][1]["parent"] == "scripted"
    base = chat(client, [user_msg("what is it?")]).json()
    adapted = client.post("/v1/chat/completions",
                          json={"model": "sunglasses", "messages": [user_msg("what is it?")]}).json()
    assert adapted["model"] == "sunglasses"
    assert adapted["choices"][0]["message"]["content"] != base["choices"][0]["message"]["content"]


def test_vqa_upload_answers_with_documented_keys(client: TestClient) -> None:
    r = client.post("/v1/vqa", files={"image": ("jacket.png", image_bytes(), "image/png")},
                    data={"question": "what colour is it?", "max_tokens": "16"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert {"answer", "model", "cached", "usage", "timings"} <= set(body)
    assert body["answer"] == "the jacket is red" and body["model"] == "scripted"
    assert body["cached"] is False and r.headers["x-vqa-cache"] in ("miss", "bypass")
    assert body["timings"]["total"] >= body["timings"]["decode"] > 0
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_vqa_upload_picks_adapter_by_model(client: TestClient) -> None:
    r = client.post("/v1/vqa", files={"image": ("x.png", image_bytes(), "image/png")},
                    data={"question": "what is it?", "model": "sunglasses"})
    assert r.status_code == 200 and r.json()["answer"].startswith("[sunglasses]")


def test_cache_header_says_miss_then_hit_for_plain_and_stream(client: TestClient) -> None:
    c = app_state(client.app).pipeline.c
    c.cache, c.cache_key = DictCache(), TextKey()
    first = chat(client, [user_msg("cache me")])
    second = chat(client, [user_msg("cache me")])
    assert (first.headers["x-vqa-cache"], second.headers["x-vqa-cache"]) == ("miss", "hit")
    assert second.json()["choices"] == first.json()["choices"]
    streamed = chat(client, [user_msg("cache me")], stream=True)
    assert streamed.headers["x-vqa-cache"] == "hit"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in sse_payloads(streamed.text)[:-1])
    assert text == first.json()["choices"][0]["message"]["content"]
    vqa = client.post("/v1/vqa", files={"image": ("x.png", image_bytes(), "image/png")},
                      data={"question": "cache me"})
    assert vqa.json()["cached"] is True and vqa.headers["x-vqa-cache"] == "hit"
    # a streamed answer is cached too, once the stream has completed
    first_stream = chat(client, [user_msg("stream me")], stream=True)
    again = chat(client, [user_msg("stream me")])
    assert (first_stream.headers["x-vqa-cache"], again.headers["x-vqa-cache"]) == ("miss", "hit")


def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    assert client.get("/health", headers={"x-request-id": "abc-123"}).headers["x-request-id"] == "abc-123"
    generated = client.get("/health").headers["x-request-id"]
    assert len(generated) >= 16
    hostile = client.get("/health", headers={"x-request-id": "x" * 500}).headers["x-request-id"]
    assert hostile != "x" * 500


def test_access_log_is_json_without_image_bytes(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vqaserve.access")
    msg = user_msg("log me")
    chat(client, [msg], stream=False)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "vqaserve.access"]
    (line,) = [x for x in lines if x["path"] == "/v1/chat/completions"]
    assert line["status"] == 200 and line["method"] == "POST" and line["ms"] >= 0
    assert line["request_id"] and line["cache"] in ("miss", "bypass")
    b64 = msg["content"][0]["image_url"]["url"].split(",")[1]
    assert all(b64[:40] not in r.getMessage() for r in caplog.records)


def test_health_ready_and_ready_reports_degraded_cache(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    async def redis_down() -> dict[str, object]:
        return {"redis": "down", "degraded": True}

    app_state(client.app).pipeline.c.health["cache"] = redis_down
    degraded = client.get("/ready").json()
    assert degraded["status"] == "degraded" and degraded["cache"]["redis"] == "down"


def test_ready_is_503_before_the_engine_loads() -> None:
    c = TestClient(make_app())  # no `with`: the lifespan (engine load) has not run
    assert c.get("/ready").status_code == 503
    assert c.get("/health").status_code == 200


async def test_health_answers_while_the_model_works() -> None:
    app = make_app()
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        slow = asyncio.create_task(c.post("/v1/chat/completions", json={
            "messages": [user_msg("[[sleep:0.5]] slow")]}))
        await asyncio.sleep(0.05)
        health = await c.get("/health")
        assert health.status_code == 200 and not slow.done()
        assert (await slow).status_code == 200


def test_metrics_count_routes_stages_tokens_and_apps_do_not_clash(client: TestClient) -> None:
    counted = chat(client, [user_msg("count me")])
    usage = counted.json()["usage"]
    chat(client, [user_msg("[[raise]]")])
    text = client.get("/metrics").text
    assert 'vqa_requests_total{method="POST",route="/v1/chat/completions",status="200"} 1.0' in text
    assert 'vqa_requests_total{method="POST",route="/v1/chat/completions",status="503"} 1.0' in text
    assert 'vqa_stage_seconds_count{stage="decode"} 2.0' in text
    # how often "generate" is timed for a failed request depends on the batcher; at least the good one
    generate = re.search(r'vqa_stage_seconds_count\{stage="generate"\} ([0-9.]+)', text)
    assert generate and float(generate.group(1)) >= 1
    assert f'vqa_tokens_total{{direction="out"}} {float(usage["completion_tokens"])}' in text
    assert f'vqa_tokens_total{{direction="in"}} {float(usage["prompt_tokens"])}' in text
    assert 'vqa_engine_errors_total{code="engine_failure"} 1.0' in text
    assert f'vqa_cache_lookups_total{{result="{counted.headers["x-vqa-cache"]}"}} 1.0' in text
    with TestClient(make_app()) as other:  # a second app in the same process has its own registry
        assert "vqa_requests_total{" not in other.get("/metrics").text


def test_web_page_and_static_files_are_served_safely(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    for evil in ("/static/../app.py", "/static/%2e%2e/app.py", "/static//etc/passwd"):
        r = client.get(evil)
        assert r.status_code == 404 and "import" not in r.text


def test_batcher_observer_and_shutdown_hooks_are_wired(monkeypatch: pytest.MonkeyPatch) -> None:
    from vqaserve import wiring

    closed: list[str] = []

    async def close_hook() -> None:
        closed.append("cache")

    real = wiring.build_components

    def with_hook(settings, engine, metrics=None, redis=None):  # type: ignore[no-untyped-def]
        components = real(settings, engine, metrics, redis)
        components.closers.append(close_hook)
        return components

    monkeypatch.setattr(wiring, "build_components", with_hook)
    with TestClient(make_app(RecordingEngine(model_id="scripted"))) as c:
        assert chat(c, [user_msg("batched")]).status_code == 200
        text = c.get("/metrics").text  # the real micro-batcher reported its batch and its queue
        assert "vqa_batch_size_count 1.0" in text and "vqa_queue_depth 0.0" in text
    assert closed == ["cache"]


def test_a_gateway_reports_its_queue_batches_and_upstream_breaker_in_metrics() -> None:
    """--engine upstream (the production path) admits through the concurrency gate: /metrics has
    the same queue and batch figures as the micro-batcher, and the upstream's circuit breaker."""
    with LiveServer(make_app(RecordingEngine(model_id="shop-toy"))) as upstream:
        from vqaserve.server.app import create_app
        from vqaserve.settings import load_settings

        gateway = create_app(load_settings(engine="upstream", upstream_url=f"{upstream.url}/v1",
                                           upstream_model="shop-toy", safety_image="off"))
        with TestClient(gateway) as c:
            # On a loaded machine the first discovery can miss; the gateway retries in the background.
            wait_until(lambda: c.get("/ready").status_code == 200, what="the gateway to find its model server")
            resp = chat(c, [user_msg("through the gateway")], model="shop-toy")
            assert resp.status_code == 200, resp.text
            text = c.get("/metrics").text
    for line in ("vqa_batch_size_count 1.0", "vqa_queue_depth 0.0", 'vqa_stage_seconds_count{stage="queue"} 1.0',
                 'vqa_breaker_state{backend="upstream"} 0.0', 'vqa_breaker_opens_total{backend="upstream"} 0.0'):
        assert line in text, line

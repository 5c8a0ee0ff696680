"""The upstream engine against a recording OpenAI-compatible double (and httpx mocks for the error table)."""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import image_bytes
from tests.integration.upstream_double import UpstreamDouble
from tests.pipelines import wired_pipeline
from tests.waiting import wait_until_async
from vqaserve.breaker import CircuitBreaker
from vqaserve.engines.upstream import UpstreamEngine
from vqaserve.errors import (
    DeadlineExceeded,
    EngineFailure,
    InvalidRequest,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    VQAError,
)
from vqaserve.images import decode as imgs
from vqaserve.settings import Settings
from vqaserve.types import EngineRequest, GenerationParams, ImageRef, Part, Question, Turn


def settings(url: str, **llm: Any) -> Settings:
    # No image check and no answer cache: the pipelines here must reach the upstream every time.
    return Settings(llm={"engine": "upstream", "upstream_url": url, **llm},
                    images={"min_pixels": 32 * 32 * 4, "max_pixels": 32 * 32 * 64},
                    safety={"image": "off"}, cache={"enabled": False})


def photo(size: tuple[int, int] = (1600, 1200)) -> bytes:
    """A noisy picture (many colours, like a camera photo) as JPEG."""
    img = Image.merge("RGB", [Image.linear_gradient("L").resize(size), Image.effect_noise(size, 40),
                              Image.radial_gradient("L").resize(size)])
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def question(text: str, data: bytes | None = None, **kw: Any) -> Question:
    parts = [Part(image_ref=ImageRef("bytes", data, name="image"))] if data is not None else []
    return Question(turns=[Turn("user", [*parts, Part(text=text)])], **kw)


def request(text: str, **params: Any) -> EngineRequest:
    return EngineRequest(turns=[Turn("user", [Part(text=text)])], params=GenerationParams(**params),
                         request_id="r1")


@pytest.fixture(scope="module")
def double() -> Iterator[UpstreamDouble]:
    server = UpstreamDouble().start()
    yield server
    server.stop()


@pytest.fixture
def upstream(double: UpstreamDouble) -> UpstreamDouble:
    double.reset()
    return double


# --- what travels upstream ---------------------------------------------------------------------------
@pytest.mark.integration
async def test_image_arrives_resized_as_data_uri_with_content_hash_uuid(upstream: UpstreamDouble) -> None:
    s = settings(upstream.url)
    engine = UpstreamEngine(s)
    await engine.start()
    pipeline = wired_pipeline(engine, s)
    data = photo((1600, 1200))
    answer = await pipeline.answer(question("What colour is it?", data))
    (received,) = upstream.received
    ((mime, size, uuid),) = received.images
    h, w = imgs.smart_resize(1200, 1600, s.images.min_pixels, s.images.max_pixels)
    assert size == (w, h) and w * h <= s.images.max_pixels  # the budget, not the 1600x1200 original
    assert mime == "image/jpeg"  # a photo travels as JPEG q95
    url = received.body["messages"][0]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    expected = imgs.normalize(data, s.images.min_pixels, s.images.max_pixels, 10**8)
    assert uuid == expected.content_hash
    assert answer.text == f"saw 1 image(s) {w}x{h}: What colour is it?"
    assert answer.model == "double-model"  # learnt from the upstream's /v1/models
    assert answer.usage.prompt_tokens == 16 and answer.usage.completion_tokens == len(answer.text.split())
    await engine.close()


@pytest.mark.integration
async def test_graphics_travel_as_lossless_png(upstream: UpstreamDouble) -> None:
    s = settings(upstream.url, upstream_send_uuid=False)
    engine = UpstreamEngine(s)
    await wired_pipeline(engine, s).answer(question("what is it?", image_bytes((300, 200))))
    ((mime, _, uuid),) = upstream.received[0].images
    assert mime == "image/png" and uuid is None
    await engine.close()


@pytest.mark.integration
async def test_params_model_and_adapter_names_are_mapped(upstream: UpstreamDouble) -> None:
    s = settings(upstream.url, upstream_model="Qwen/Qwen3-VL-8B-Instruct",
                 adapters={"sunglasses": "shop-lora-v2"}, upstream_api_key="sekret")
    engine = UpstreamEngine(s)
    assert engine.info().model_id == "Qwen/Qwen3-VL-8B-Instruct" and engine.adapters() == ["sunglasses"]
    base, tuned = request("hi", max_new_tokens=7, temperature=0.7, top_p=0.8, top_k=20, seed=3,
                          stop=("\n",)), request("hi")
    tuned.adapter = "sunglasses"
    results = await engine.generate([base, tuned])
    assert all(not isinstance(r, VQAError) for r in results)
    bodies = sorted((r.body for r in upstream.received), key=lambda b: b["model"])
    assert bodies[0]["model"] == "Qwen/Qwen3-VL-8B-Instruct" and bodies[1]["model"] == "shop-lora-v2"
    b = bodies[0]
    assert (b["max_tokens"], b["temperature"], b["top_p"], b["top_k"], b["seed"], b["stop"]) == \
        (7, 0.7, 0.8, 20, 3, ["\n"])
    assert "top_k" not in bodies[1] and bodies[1]["temperature"] == 0.0  # greedy
    assert upstream.received[0].headers["authorization"] == "Bearer sekret"
    unknown = request("hi")
    unknown.adapter = "nope"
    (result,) = await engine.generate([unknown])
    assert isinstance(result, NotFound) and result.status == 404
    await engine.close()


@pytest.mark.integration
async def test_base_model_and_lora_adapters_are_learnt_from_the_upstream(upstream: UpstreamDouble) -> None:
    upstream.behaviour.models = [{"id": "shop-v2", "parent": "qwen3-vl"},
                                 {"id": "qwen3-vl", "max_model_len": 16384},
                                 {"id": "other-lora", "parent": "another-base"}]
    engine = UpstreamEngine(settings(upstream.url))
    await engine.start()
    info = engine.info()
    assert (info.model_id, info.max_context, info.adapters) == ("qwen3-vl", 16384, ["shop-v2"])
    tuned = request("hi")
    tuned.adapter = "shop-v2"
    (result,) = await engine.generate([tuned])
    assert not isinstance(result, VQAError) and upstream.received[0].body["model"] == "shop-v2"
    configured = UpstreamEngine(settings(upstream.url, adapters={"sunglasses": "shop-v2"}))
    await configured.start()
    assert configured.adapters() == ["sunglasses"]  # an explicit mapping wins
    await engine.close()
    await configured.close()


# --- streaming -----------------------------------------------------------------------------------------
@pytest.mark.integration
async def test_stream_is_relayed_chunk_by_chunk_with_usage(upstream: UpstreamDouble) -> None:
    upstream.behaviour.chunks = ["Hel", "lo", ", wor", "ld", " 你好", "!"]
    upstream.behaviour.finish_reason = "length"
    engine = UpstreamEngine(settings(upstream.url))
    deltas = [d async for d in engine.stream(request("say hello"))]
    assert [d.text for d in deltas[:-1]] == upstream.behaviour.chunks  # same pieces, same order
    assert deltas[-1].text == "" and deltas[-1].finish_reason == "length"
    assert deltas[-1].usage is not None and deltas[-1].usage.prompt_tokens == 11
    assert upstream.received[0].body["stream_options"] == {"include_usage": True}
    await engine.close()


@pytest.mark.integration
async def test_pipeline_stream_through_upstream_matches_non_stream(upstream: UpstreamDouble) -> None:
    s = settings(upstream.url)
    engine = UpstreamEngine(s)
    pipeline = wired_pipeline(engine, s)
    # A pause between the upstream's chunks: each reaches the reader on its own (a reader that falls
    # behind gets what waits joined into one delta, which would make the count below a race).
    upstream.behaviour.chunk_pause_s = 0.05
    whole = await pipeline.answer(question("describe it", image_bytes((200, 100))))
    _, deltas = await pipeline.open_stream(question("describe it", image_bytes((200, 100)), stream=True))
    pieces = [d async for d in deltas]
    assert "".join(d.text for d in pieces) == whole.text and len(pieces) > 2
    await engine.close()


# --- cancellation --------------------------------------------------------------------------------------
@pytest.mark.integration
async def test_stop_signal_closes_the_upstream_request(upstream: UpstreamDouble) -> None:
    upstream.behaviour.delay_s = 5.0
    engine = UpstreamEngine(settings(upstream.url, upstream_model="double-model"))
    req = request("slow one")
    asyncio.get_running_loop().call_later(0.3, req.cancel.set)
    t0 = time.monotonic()
    (result,) = await engine.generate([req])
    assert isinstance(result, EngineFailure) and time.monotonic() - t0 < 4.0  # not the 5 s
    await wait_until_async(lambda: upstream.disconnects == 1)
    assert upstream.completed == 0
    await engine.close()


@pytest.mark.integration
async def test_closing_a_stream_midway_closes_the_upstream_stream(upstream: UpstreamDouble) -> None:
    upstream.behaviour.chunks = [f"w{i} " for i in range(100)]
    upstream.behaviour.chunk_pause_s = 0.05
    engine = UpstreamEngine(settings(upstream.url, upstream_model="double-model"))
    gen = engine.stream(request("long answer"))
    first = [await gen.__anext__(), await gen.__anext__()]
    assert [d.text for d in first] == ["w0 ", "w1 "]
    await gen.aclose()  # what the pipeline does when the client disconnects
    await wait_until_async(lambda: upstream.disconnects == 1)
    assert upstream.completed == 0
    await engine.close()


# --- errors, timeouts, breaker ------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize(("status", "retry_after", "kind", "our_status"), [
    (400, None, InvalidRequest, 400), (422, None, InvalidRequest, 400), (404, None, NotFound, 404),
    (413, None, PayloadTooLarge, 413), (429, "7", Overloaded, 429), (503, "3", EngineFailure, 503),
    (500, None, EngineFailure, 503), (401, None, EngineFailure, 503)])
async def test_upstream_errors_map_to_documented_statuses(upstream: UpstreamDouble, status: int,
                                                          retry_after: str | None, kind: type,
                                                          our_status: int) -> None:
    upstream.behaviour.status = status
    upstream.behaviour.retry_after = retry_after
    upstream.behaviour.error_message = "bad thing in /opt/vllm/serving.py (serving_chat.py) at 0x7f3a2b1c9d80"
    engine = UpstreamEngine(settings(upstream.url, upstream_model="double-model"))
    (result,) = await engine.generate([request("x")])
    assert isinstance(result, kind) and result.status == our_status
    if retry_after:
        assert result.retry_after == float(retry_after)
    assert not re.search(r"/opt/vllm|\.py\b|0x7f3a", result.message)  # nothing internal leaks
    with pytest.raises(kind):  # the streaming path maps the same way
        async for _ in engine.stream(request("x")):
            pass
    await engine.close()


@pytest.mark.integration
async def test_upstream_timeout_is_a_504(upstream: UpstreamDouble) -> None:
    upstream.behaviour.delay_s = 3.0
    engine = UpstreamEngine(settings(upstream.url, upstream_model="double-model", upstream_timeout_s=0.3))
    (result,) = await engine.generate([request("slow")])
    assert isinstance(result, DeadlineExceeded) and result.status == 504
    await engine.close()


@pytest.mark.integration
async def test_dead_upstream_opens_the_breaker_and_health_says_so_then_recovers() -> None:
    late = UpstreamDouble()  # its port is chosen but nothing listens yet: a dead upstream
    s = settings(late.url, upstream_model="double-model", upstream_retries=1, upstream_breaker_failures=2,
                 upstream_breaker_reset_s=2.0)
    engine = UpstreamEngine(s)
    await engine.start()  # a known model name lets a replica start before its model server
    for _ in range(2):
        (result,) = await engine.generate([request("x")])
        assert isinstance(result, EngineFailure) and result.status == 503
    health = await engine.health()
    assert health["ok"] is False and health["breaker"]["state"] == "open"  # type: ignore[index]
    (result,) = await engine.generate([request("x")])  # fails fast: no connect attempt while open
    assert isinstance(result, EngineFailure) and result.retry_after and "paused" in result.message
    assert result.code != "upstream_unreachable"
    late.start()
    try:

        async def healthy() -> bool:
            return bool((await engine.health())["ok"])

        # past reset_s the next probe is let through (half-open) and closes the breaker
        await wait_until_async(healthy, what="the upstream's health after it came back", every=0.1)
        health = await engine.health()
        assert health["ok"] is True and health["breaker"]["state"] == "closed"  # type: ignore[index]
        (result,) = await engine.generate([request("x")])
        assert not isinstance(result, VQAError)
    finally:
        await engine.close()
        late.stop()


@pytest.mark.unit
async def test_connect_errors_are_retried_with_bounded_backoff() -> None:
    calls: list[float] = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise httpx.ConnectError("refused", request=req)
        return httpx.Response(200, json={"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
                                         "usage": {"prompt_tokens": 1, "completion_tokens": 1}})

    s = settings("http://upstream.invalid:8000", upstream_model="m", upstream_retries=3)
    engine = UpstreamEngine(s, transport=httpx.MockTransport(handler))
    (result,) = await engine.generate([request("x")])
    assert not isinstance(result, VQAError) and result.text == "ok" and len(calls) == 3
    assert calls[1] - calls[0] >= 0.09 and calls[2] - calls[1] >= 0.19  # backoff doubles
    calls.clear()
    s2 = settings("http://upstream.invalid:8000", upstream_model="m", upstream_retries=1)
    always = UpstreamEngine(s2, transport=httpx.MockTransport(
        lambda r: (_ for _ in ()).throw(httpx.ConnectError("refused", request=r))))
    (result,) = await always.generate([request("x")])
    assert isinstance(result, EngineFailure) and result.code == "upstream_unreachable"


@pytest.mark.unit
def test_breaker_opens_after_consecutive_failures_and_half_opens_for_one_probe() -> None:
    now = [0.0]
    b = CircuitBreaker(failure_threshold=3, reset_s=10, clock=lambda: now[0])
    b.record_failure()
    b.record_success()  # a success in between resets the count
    for _ in range(3):
        assert b.allow()
        b.record_failure()
    assert b.state == "open" and not b.allow() and b.retry_after() == 10
    now[0] = 10.0
    assert b.state == "half_open" and b.allow() and not b.allow()  # exactly one probe
    b.record_failure()  # the probe failed: open again, for another reset_s
    assert b.state == "open" and b.opens == 2
    now[0] = 20.0
    assert b.allow()
    b.record_success()
    assert b.state == "closed" and b.allow()


@pytest.mark.unit
def test_config_errors_are_one_clear_line() -> None:
    from vqaserve.errors import ConfigError

    with pytest.raises(ConfigError, match="needs --upstream-url"):
        UpstreamEngine(Settings(llm={"engine": "upstream"}))
    with pytest.raises(ConfigError, match="http"):
        UpstreamEngine(settings("ftp://somewhere"))


@pytest.mark.unit
def test_a_probe_that_never_reports_back_stops_blocking_after_reset() -> None:
    now = [0.0]
    b = CircuitBreaker(failure_threshold=1, reset_s=5, clock=lambda: now[0])
    b.record_failure()
    now[0] = 5.0
    assert b.allow() and not b.allow()  # the probe's owner vanishes without a verdict
    now[0] = 9.9
    assert not b.allow()
    now[0] = 10.1
    assert b.allow()  # a stale probe no longer holds the breaker shut

"""Fault injection on a live server (uvicorn in a thread, scripted engine with fault markers).

Each case checks the failure is reported properly AND that the service is still ready and answers
the next request: engine exception, out of memory, deadline, client disconnect (plain and stream),
Redis dying under the cache, the upstream model server dying. Redis dying under the rate limiter is
in test_ops_access.py.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from tests.ops_support import ThreadServer, chat_body
from tests.redis_fixture import RedisServer
from tests.servers import ThreadedUvicorn
from tests.waiting import wait_until
from vqaserve.engines.scripted import ScriptedEngine
from vqaserve.server.app import create_app
from vqaserve.settings import load_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def live(request: pytest.FixtureRequest) -> Any:
    """A live server with request_timeout_s=20, or another value given by indirect parametrize."""
    deadline = str(getattr(request, "param", "20"))
    engine = ScriptedEngine(model_id="scripted", token_delay_s=0.1)
    app = create_app(load_settings(engine="scripted", request_timeout_s=deadline, safety_image="off"),
                     engine=engine)
    with ThreadServer(app) as server:
        server.engine = engine  # type: ignore[attr-defined]
        yield server


def post(url: str, text: str, rid: str | None = None, timeout: float = 20,
         model: str | None = "scripted") -> httpx.Response:
    headers = {"x-request-id": rid} if rid else {}
    return httpx.post(url + "/v1/chat/completions", json=chat_body(text, model=model), headers=headers,
                      timeout=timeout)


def assert_still_serving(url: str) -> None:
    assert httpx.get(url + "/ready", timeout=5).status_code == 200
    r = post(url, "are you still there?")
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"].startswith("answer to: are you still there?")


@pytest.mark.parametrize("live", ["3"], indirect=True)
def test_a_request_past_its_deadline_gets_504_and_generation_stops(live: Any) -> None:
    started = time.monotonic()
    r = post(live.url, "slow [[sleep:10]]", rid="deadline-1")
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
    assert time.monotonic() - started < 9  # the deadline (3 s), not the 10 s of work
    # If the engine got to it, it was told to stop (else it timed out in the queue: never ran).
    if any("deadline-1" in batch for batch in live.engine.batches):
        wait_until(lambda: "deadline-1" in live.engine.stopped, what="the engine told to stop")
    assert_still_serving(live.url)


# The default 20 s deadline cannot be what stops these: the hang-up must.
def test_client_disconnect_stops_a_plain_request(live: Any) -> None:
    import socket

    body = json.dumps(chat_body("then I leave [[sleep:5]]")).encode()
    sock = socket.create_connection(("127.0.0.1", live.port), timeout=10)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"x-request-id: gone-plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    wait_until(lambda: any("gone-plain" in batch for batch in live.engine.batches), what="the request at the engine")
    sock.close()  # hang up while the engine works on it
    # Without the stop the work would run its 5 s, finish normally and never show up in `stopped`.
    wait_until(lambda: "gone-plain" in live.engine.stopped, what="the engine told to stop")
    assert_still_serving(live.url)


def test_client_disconnect_stops_a_stream(live: Any) -> None:
    words = " ".join(f"w{i}" for i in range(60))  # 60 words at 0.1 s each: 6 s if nobody stops it
    body = chat_body(f"[[say:{words}]]", stream=True)
    with httpx.Client(timeout=10) as client, client.stream(
            "POST", live.url + "/v1/chat/completions", json=body,
            headers={"x-request-id": "gone-stream"}) as r:
        assert r.status_code == 200
        got = 0
        for line in r.iter_lines():
            if line.startswith("data: {"):
                got += 1
                if got == 3:
                    break  # leave mid-stream
    wait_until(lambda: "gone-stream" in live.engine.stopped, what="the engine told to stop")
    assert_still_serving(live.url)


def test_upstream_dying_is_reported_and_the_service_recovers() -> None:
    from fastapi import FastAPI

    double = FastAPI()

    @double.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "double", "object": "model", "owned_by": "test"}]}

    @double.post("/v1/chat/completions")
    async def chat() -> dict[str, Any]:
        return {"id": "x", "object": "chat.completion", "created": 0, "model": "double",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "from upstream"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}

    double.state.settings = None
    upstream = ThreadedUvicorn(double).start()
    port = upstream.port  # the model server comes back on the same address
    settings = load_settings(engine="upstream", upstream_url=f"http://127.0.0.1:{port}/v1",
                             upstream_model="double", request_timeout_s="10", safety_image="off")
    app = create_app(settings)
    with ThreadServer(app, settings) as gateway:
        ok = post(gateway.url, "hello", model=None)
        assert ok.status_code == 200 and json.loads(ok.text)["choices"][0]["message"]["content"]
        upstream.stop()
        failed = post(gateway.url, "hello again", model=None)
        assert failed.status_code in (502, 503, 504), failed.text
        assert "error" in failed.json()
        assert httpx.get(gateway.url + "/health").status_code == 200
        upstream = ThreadedUvicorn(double, port=port).start()
        try:
            wait_until(lambda: post(gateway.url, "back?", model=None).status_code == 200, what="answers again")
            assert httpx.get(gateway.url + "/ready").status_code == 200
        finally:
            upstream.stop()


def test_a_stream_read_to_the_end_is_not_counted_as_stopped(live: Any) -> None:
    with httpx.Client(timeout=10) as client:
        r = client.post(live.url + "/v1/chat/completions", json=chat_body("[[say:one two three]]", stream=True),
                        headers={"x-request-id": "complete-stream"})
        assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
    time.sleep(0.2)
    assert "complete-stream" not in live.engine.stopped


def test_redis_dying_under_the_cache_degrades_but_keeps_answering(redis_server: RedisServer) -> None:
    settings = load_settings(engine="scripted", safety_image="off", redis_url=redis_server.url)
    app = create_app(settings, engine=ScriptedEngine(model_id="scripted"))
    with ThreadServer(app, settings) as server:
        assert post(server.url, "before").status_code == 200
        assert post(server.url, "before").headers["x-vqa-cache"] == "hit"
        redis_server.kill()
        started = time.monotonic()
        r = post(server.url, "after redis died")
        assert r.status_code == 200, r.text
        assert time.monotonic() - started < 10  # short Redis timeouts, no hang
        ready = httpx.get(server.url + "/ready", timeout=10)
        assert ready.status_code == 200 and ready.json()["status"] in ("ready", "degraded")
        assert post(server.url, "next one").status_code == 200

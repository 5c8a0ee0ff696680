"""Fault injection on a live server (uvicorn in a thread, scripted engine with fault markers).

Each case checks the failure is reported properly AND that the service is still ready and answers
the next request: engine exception, out of memory, deadline, client disconnect (plain and stream),
Redis dying under the cache, the upstream model server dying. Redis dying under the rate limiter is
in test_ops_access.py.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.ops_support import ThreadServer, chat_body, free_port
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


def wait_for(predicate: Any, seconds: float = 5.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def test_an_exception_on_one_request_fails_only_that_request(live: Any) -> None:
    texts = ["first [[sleep:0.3]]", "second [[raise]] [[sleep:0.3]]", "third [[sleep:0.3]]", "fourth"]
    with ThreadPoolExecutor(len(texts)) as pool:
        responses = list(pool.map(lambda it: post(live.url, it[1], rid=f"mid-{it[0]}"), enumerate(texts)))
    # When the batcher put the failing request in a batch with others, those still got answers.
    shared = [b for b in live.engine.batches if "mid-1" in b and len(b) > 1]
    for batch in shared:
        assert {rid for rid in batch if rid != "mid-1"} <= {"mid-0", "mid-2", "mid-3"}
    assert [r.status_code for r in responses] == [200, 503, 200, 200]
    error = responses[1].json()["error"]
    assert error["code"] == "engine_failure" and "retry" in error["message"]
    assert int(responses[1].headers["retry-after"]) >= 1
    for r, t in zip(responses, texts, strict=True):
        if r.status_code == 200:
            assert r.json()["choices"][0]["message"]["content"].startswith("answer to: " + t.split()[0])
    assert_still_serving(live.url)


def test_out_of_memory_is_a_503_with_retry_after_and_the_engine_recovers(live: Any) -> None:
    r = post(live.url, "a huge one [[oom]]")
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
    assert "out of memory" in r.json()["error"]["message"]
    assert_still_serving(live.url)


@pytest.mark.parametrize("live", ["3"], indirect=True)
def test_a_request_past_its_deadline_gets_504_and_generation_stops(live: Any) -> None:
    started = time.monotonic()
    r = post(live.url, "slow [[sleep:10]]", rid="deadline-1")
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
    assert time.monotonic() - started < 9  # the deadline (3 s), not the 10 s of work
    # If the engine got to it, it was told to stop (else it timed out in the queue: never ran).
    if any("deadline-1" in batch for batch in live.engine.batches):
        assert wait_for(lambda: "deadline-1" in live.engine.stopped)
    assert_still_serving(live.url)


# The default 20 s deadline cannot be what stops these: the hang-up must.
def test_client_disconnect_stops_a_plain_request(live: Any) -> None:
    import socket

    body = json.dumps(chat_body("then I leave [[sleep:5]]")).encode()
    sock = socket.create_connection(("127.0.0.1", live.port), timeout=10)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"x-request-id: gone-plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    assert wait_for(lambda: any("gone-plain" in batch for batch in live.engine.batches), seconds=20)
    sock.close()  # hang up while the engine works on it
    # Without the stop the work would run its 5 s, finish normally and never show up in `stopped`.
    assert wait_for(lambda: "gone-plain" in live.engine.stopped, seconds=3)
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
    assert wait_for(lambda: "gone-stream" in live.engine.stopped, seconds=3)
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
    port = free_port()

    def start_double() -> Any:
        import threading

        import uvicorn

        server = uvicorn.Server(uvicorn.Config(double, host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        assert wait_for(lambda: server.started, 10)
        return server

    upstream = start_double()
    settings = load_settings(engine="upstream", upstream_url=f"http://127.0.0.1:{port}/v1",
                             upstream_model="double", request_timeout_s="10", safety_image="off")
    app = create_app(settings)
    with ThreadServer(app, settings) as gateway:
        ok = post(gateway.url, "hello", model=None)
        assert ok.status_code == 200 and json.loads(ok.text)["choices"][0]["message"]["content"]
        upstream.should_exit = True
        assert wait_for(lambda: not upstream.started or upstream.should_exit, 5)
        time.sleep(0.5)
        failed = post(gateway.url, "hello again", model=None)
        assert failed.status_code in (502, 503, 504), failed.text
        assert "error" in failed.json()
        assert httpx.get(gateway.url + "/health").status_code == 200
        upstream = start_double()
        assert wait_for(lambda: post(gateway.url, "back?", model=None).status_code == 200, seconds=15)
        assert httpx.get(gateway.url + "/ready").status_code == 200
        upstream.should_exit = True


def test_a_stream_read_to_the_end_is_not_counted_as_stopped(live: Any) -> None:
    with httpx.Client(timeout=10) as client:
        r = client.post(live.url + "/v1/chat/completions", json=chat_body("[[say:one two three]]", stream=True),
                        headers={"x-request-id": "complete-stream"})
        assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
    time.sleep(0.2)
    assert "complete-stream" not in live.engine.stopped


def test_redis_dying_under_the_cache_degrades_but_keeps_answering(tmp_path: Any) -> None:
    from tests.ops_support import redis_server

    with redis_server(tmp_path) as (url, proc):
        settings = load_settings(engine="scripted", safety_image="off", redis_url=url)
        app = create_app(settings, engine=ScriptedEngine(model_id="scripted"))
        with ThreadServer(app, settings) as server:
            assert post(server.url, "before").status_code == 200
            assert post(server.url, "before").headers["x-vqa-cache"] == "hit"
            proc.kill()
            proc.wait()
            started = time.monotonic()
            r = post(server.url, "after redis died")
            assert r.status_code == 200, r.text
            assert time.monotonic() - started < 10  # short Redis timeouts, no hang
            ready = httpx.get(server.url + "/ready", timeout=10)
            assert ready.status_code == 200 and ready.json()["status"] in ("ready", "degraded")
            assert post(server.url, "next one").status_code == 200

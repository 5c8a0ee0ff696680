"""API keys on every route, per-key rate limits (local and through a real Redis), static-file safety."""

from __future__ import annotations

import asyncio
import http.client
import re
import time
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.ops_support import ThreadServer, chat_body, image_bytes
from tests.redis_fixture import RedisServer
from vqaserve.engines.scripted import ScriptedEngine
from vqaserve.server.app import create_app
from vqaserve.server.state import app_state
from vqaserve.settings import load_settings

pytestmark = pytest.mark.integration
KEY, OTHER = "sk-test-0123456789", "sk-other-abcdef"
LEAKS = re.compile(r"Traceback|File \"|/work/|site-packages|\.py\b|0x[0-9a-fA-F]{6,}")


def app_with(**settings: Any):  # type: ignore[no-untyped-def]
    settings.setdefault("engine", "scripted")
    settings.setdefault("safety_image", "off")  # the image classifier is tested on its own branch
    return create_app(load_settings(**settings), engine=ScriptedEngine(model_id="scripted"))


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert not LEAKS.search(response.text)
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    return error  # type: ignore[no-any-return]


def every_route(app: Any) -> list[tuple[str, str]]:
    """Every documented API operation, plus the page, a static file and the OpenAPI document."""
    out = [(method.upper(), path) for path, ops in app.openapi()["paths"].items() for method in ops]
    out += [("GET", "/"), ("GET", "/static/app.js"), ("GET", "/openapi.json")]
    if not any(p == "/health" for _, p in out):
        out.append(("GET", "/health"))
    return out


@pytest.mark.parametrize("public_page", [True, False])
def test_a_key_is_needed_on_every_route_but_the_probes(public_page: bool) -> None:
    app = app_with(api_keys=f"{KEY},{OTHER}", public_web_page=public_page)
    routes = every_route(app)
    assert {p for _, p in routes} >= {"/v1/chat/completions", "/v1/vqa", "/v1/models", "/ready",
                                      "/metrics", "/", "/static/app.js", "/health", "/openapi.json"}
    open_paths = {"/health", "/ready"} | ({"/", "/static/app.js"} if public_page else set())
    with TestClient(app) as client:
        for method, path in routes:
            for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": f"Basic {KEY}"},
                            {"Authorization": f"Bearer {KEY}x"}):
                r = client.request(method, path, headers=headers)
                if path in open_paths:
                    assert r.status_code != 401, (method, path)
                elif path.startswith("/admin/"):  # admin keys only (none here): no API key opens it
                    bearer = headers.get("Authorization", "").startswith("Bearer ")
                    assert assert_error(r, 403 if bearer else 401, "admin_api_off" if bearer else "invalid_admin_key")
                else:
                    err = assert_error(r, 401, "invalid_api_key")
                    assert err["type"] == "authentication_error" and "Authorization" in err["message"]
                    assert r.headers["www-authenticate"] == "Bearer"
            for key in (KEY, OTHER):
                r = client.request(method, path, headers={"Authorization": f"Bearer {key}"})
                assert r.status_code != 401 and (r.status_code == 403) == path.startswith("/admin/"), (method, path)
        ok = client.post("/v1/chat/completions", json=chat_body("what is it?"),
                         headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"]


async def test_probes_need_no_key_and_tell_only_status(tmp_path: Any) -> None:
    """An orchestrator's liveness and readiness probes carry no secret; what they answer is status."""
    release = asyncio.Event()

    class SlowEngine(ScriptedEngine):
        async def start(self) -> None:
            await release.wait()

    model_dir = tmp_path / "private-models" / "shop-toy-v2"
    app = create_app(load_settings(engine="scripted", safety_image="off", api_keys=KEY, model=str(model_dir)),
                     engine=SlowEngine(model_id="shop-toy-v2"))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        loading = await client.get("/ready")  # no key: 503 with the phase
        release.set()
        while not app_state(app).startup.done.is_set():
            await asyncio.sleep(0.02)
        ready = await client.get("/ready")
        assert (await client.get("/health")).status_code == 200
        assert_error(await client.get("/v1/models"), 401, "invalid_api_key")
    assert loading.status_code == 503 and loading.json()["status"] == "loading", loading.text
    assert ready.status_code == 200 and set(ready.json()) == {"status", "model", "adapters", "engine", "cache"}
    for reply in (loading, ready):
        assert KEY not in reply.text and "private-models" not in reply.text and not LEAKS.search(reply.text)


def test_without_keys_configured_the_service_is_open() -> None:
    with TestClient(app_with()) as client:
        assert client.get("/v1/models").status_code == 200
        assert client.post("/v1/chat/completions", json=chat_body("hi")).status_code == 200


def test_unauthenticated_big_bodies_are_refused_before_they_are_read() -> None:
    with TestClient(app_with(api_keys=KEY, max_body_bytes=1000)) as client:
        # No key: 401 (not 413) - the key check comes first, the body is never buffered.
        r = client.post("/v1/chat/completions", content=b"x" * 5000,
                        headers={"content-type": "application/json"})
        assert_error(r, 401, "invalid_api_key")


def test_request_rate_limit_bursts_then_429_then_recovers(monkeypatch: pytest.MonkeyPatch) -> None:
    import vqaserve.server.ratelimit as rl

    now = [5000.0]
    monkeypatch.setattr(rl, "time", type("T", (), {"monotonic": staticmethod(lambda: now[0])}))
    auth = {"Authorization": f"Bearer {KEY}"}
    with TestClient(app_with(api_keys=f"{KEY},{OTHER}", rate_limit_rpm="3")) as client:
        assert [client.get("/v1/models", headers=auth).status_code for _ in range(3)] == [200] * 3
        r = client.post("/v1/chat/completions", json=chat_body("hi"), headers=auth)
        err = assert_error(r, 429, "rate_limited")
        assert err["type"] == "rate_limit_error" and "VQA_RATE_LIMIT_RPM" in err["message"]
        assert int(r.headers["retry-after"]) == 20  # one request refills in 60/3 s
        # Other keys have their own budget; probes are not limited.
        assert client.get("/v1/models", headers={"Authorization": f"Bearer {OTHER}"}).status_code == 200
        assert client.get("/ready", headers=auth).status_code == 200
        now[0] += 20.0
        assert client.get("/v1/models", headers=auth).status_code == 200
        assert client.get("/v1/models", headers=auth).status_code == 429


def test_image_rate_limit_counts_images_per_key(monkeypatch: pytest.MonkeyPatch) -> None:
    import vqaserve.server.ratelimit as rl

    now = [100.0]
    monkeypatch.setattr(rl, "time", type("T", (), {"monotonic": staticmethod(lambda: now[0])}))
    with TestClient(app_with(rate_limit_ipm="3")) as client:
        assert client.post("/v1/chat/completions", json=chat_body("two", images=2)).status_code == 200
        assert client.post("/v1/chat/completions", json=chat_body("none", images=0)).status_code == 200
        r = client.post("/v1/chat/completions", json=chat_body("two more", images=2))
        assert_error(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) == 20
        r = client.post("/v1/vqa", files={"image": ("p.png", image_bytes(), "image/png")},
                        data={"question": "what?"})
        assert r.status_code == 200, r.text  # one image token was left
        too_many = client.post("/v1/chat/completions", json=chat_body("four", images=4))
        assert_error(too_many, 400, "too_many_images")
        now[0] += 40.0
        assert client.post("/v1/chat/completions", json=chat_body("two", images=2)).status_code == 200


def test_rate_limits_are_shared_through_redis_and_survive_redis_dying(redis_server: RedisServer) -> None:
    settings = {"api_keys": KEY, "rate_limit_rpm": "3", "redis_url": redis_server.url}
    auth = {"Authorization": f"Bearer {KEY}"}
    with TestClient(app_with(**settings)) as a, TestClient(app_with(**settings)) as b:
        # Two instances, one budget: 2 on A + 1 on B uses the 3 tokens, the 4th is refused on both.
        assert [a.get("/v1/models", headers=auth).status_code for _ in range(2)] == [200, 200]
        assert b.get("/v1/models", headers=auth).status_code == 200
        assert b.get("/v1/models", headers=auth).status_code == 429
        assert a.get("/v1/models", headers=auth).status_code == 429
        redis_server.kill()
        # Redis is gone: answers keep flowing under local buckets, quickly, and stay limited.
        started = time.monotonic()
        codes = [b.post("/v1/chat/completions", json=chat_body("still there?"), headers=auth).status_code
                 for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        assert time.monotonic() - started < 10.0  # no request waits long on the dead Redis
        assert b.get("/ready", headers=auth).status_code == 200
        assert b.get("/health").status_code == 200


def raw_get(port: int, path: str) -> tuple[int, bytes]:
    """A GET with the path bytes exactly as given (http clients would normalise `..` away)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


TRAVERSALS = [
    "/static/../server/app.py", "/static/../../settings.py", "/static/..%2fapp.py", "/static/%2e%2e/app.py",
    "/static/%2e%2e%2fapp.py", "/static/%252e%252e/app.py", "/static/%252e%252e%252fapp.py",
    "/static/..\\app.py", "/static/..%5capp.py", "/static//etc/passwd", "/static/%2fetc%2fpasswd",
    "/static/....//app.py", "/static/./../app.py", "/static/app.js/../../app.py", "/static/%00app.js",
    "/static/.hidden", "/../../../../etc/passwd", "/static/../../../../../../etc/passwd",
]


def test_static_files_never_leave_their_folder() -> None:
    with ThreadServer(app_with()) as server:
        status, body = raw_get(server.port, "/static/app.js")
        assert status == 200 and body
        for path in TRAVERSALS:
            status, body = raw_get(server.port, path)
            assert status in (400, 404), (path, status)
            # Nothing of the target file, no server path (the 404 message may echo the client's path).
            assert b"import " not in body and b"root:" not in body, path
            assert b"Traceback" not in body and b"/work/" not in body and b"site-packages" not in body


def test_symlinks_out_of_the_static_folder_are_not_followed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fastapi import FastAPI

    from vqaserve.server.routes_ops import mount_static

    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<p>page</p>")
    (static / "ok.js").write_text("console.log(1)")
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    (static / "link.txt").symlink_to(secret)
    (static / "linkdir").symlink_to(tmp_path)
    app = FastAPI()
    mount_static(app, static)
    with TestClient(app) as client:
        assert client.get("/static/ok.js").text == "console.log(1)"
        for path in ("/static/link.txt", "/static/linkdir/secret.txt"):
            r = client.get(path)
            assert r.status_code == 404 and "secret" not in r.text, path


def test_body_limit_is_enforced_while_reading_not_after() -> None:
    import select
    import socket

    limit = 100_000
    with ThreadServer(app_with(max_body_bytes=str(limit))) as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        chunk, sent, total, reply = b"x" * 16_384, 0, 20_000_000, b""
        try:
            while sent < total:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                if select.select([sock], [], [], 0)[0]:
                    reply = sock.recv(65536)
                    break
            else:
                reply = sock.recv(65536)
        except OSError:
            reply = reply or b""
        sock.close()
        assert reply.startswith(b"HTTP/1.1 413"), reply[:80]
        # Refused mid-upload: the client had not sent a quarter of its 20 MB (loopback socket
        # buffers hold a few MB, so 'sent' overshoots the 100 KB the server read).
        assert sent < total // 4
        assert httpx.get(server.url + "/ready").status_code == 200


def test_while_draining_new_requests_get_503_and_ready_is_false_but_health_is_ok() -> None:
    app = app_with(api_keys=KEY, shutdown_grace_s="12")
    auth = {"Authorization": f"Bearer {KEY}"}
    with TestClient(app) as client:
        assert client.post("/v1/chat/completions", json=chat_body("a", stream=True), headers=auth).status_code == 200
        assert client.post("/v1/chat/completions", json=chat_body("b [[raise]]"), headers=auth).status_code == 503
        assert app_state(app).drain.in_flight == 0  # every finished request (streamed, failed) was counted out
        app_state(app).drain.start()
        r = client.post("/v1/chat/completions", json=chat_body("late"), headers=auth)
        err = assert_error(r, 503, "shutting_down")
        assert "shutting down" in err["message"]
        assert 1 <= int(r.headers["retry-after"]) <= 12 and r.headers["connection"] == "close"
        ready = client.get("/ready", headers=auth)
        assert ready.status_code == 503 and ready.json() == {"status": "shutting_down"}
        assert client.get("/health").status_code == 200

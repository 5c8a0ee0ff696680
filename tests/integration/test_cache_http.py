"""Two `vqa serve` processes sharing one private Redis: hits across processes, x-vqa-cache, and a
Redis outage mid-traffic (every request still 200, /ready degraded, recovery without a restart)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cache_helpers import free_port, image_bytes
from redis_fixture import RedisServer, redis_server  # noqa: F401  (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # two service start-ups: ~25 s idle
SRC = Path(__file__).resolve().parents[2] / "src"
PNG = image_bytes(size=(160, 96))


class Service:
    """`python -m vqaserve serve` on the scripted engine, on a free port; stopped on exit."""

    def __init__(self, redis_url: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("VQA_")}
        env.update(PYTHONPATH=str(SRC), PYTHONUNBUFFERED="1", VQA_ENGINE="scripted", VQA_HOST="127.0.0.1",
                   VQA_PORT=str(self.port), VQA_REDIS_URL=redis_url, VQA_SAFETY_IMAGE="off",
                   VQA_CACHE__REDIS_PREFIX="http-test", VQA_CACHE__REDIS_PROBE_INTERVAL_S="0.1",
                   VQA_CACHE__REDIS_TIMEOUT_MS="3000",  # generous: this machine is shared
                   VQA_RATE_LIMIT_RPM="100000")  # the limiter shares the cache's Redis link
        self.proc = subprocess.Popen([sys.executable, "-m", "vqaserve", "serve"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("vqa serve exited: " + self.proc.stderr.read().decode()[-2000:])  # type: ignore[union-attr]
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("vqa serve did not become ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def chat(self, question: str, stream: bool = False, **params: Any) -> httpx.Response:
        uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
        body = {"model": "scripted", "stream": stream, **params, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": question}]}]}
        return httpx.post(self.url + "/v1/chat/completions", json=body, timeout=10)

    def ready(self) -> dict[str, Any]:
        return httpx.get(self.url + "/ready", timeout=5).json()  # type: ignore[no-any-return]


@pytest.fixture
def services(redis_server: RedisServer) -> Iterator[tuple[Service, Service]]:  # noqa: F811
    a, b = Service(redis_server.url), Service(redis_server.url)
    try:
        a.wait_ready()
        b.wait_ready()
        yield a, b
    finally:
        a.stop()
        b.stop()


def wait_for(predicate: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def test_two_servers_share_one_redis_and_survive_its_outage(
        services: tuple[Service, Service], redis_server: RedisServer) -> None:  # noqa: F811
    a, b = services
    first = a.chat("What color is it?")
    assert first.status_code == 200 and first.headers["x-vqa-cache"] == "miss"
    # The same photo as a multipart PNG upload on the other process: a hit through Redis.
    upload = httpx.post(b.url + "/v1/vqa", files={"image": ("p.png", PNG, "image/png")},
                        data={"question": "What color is it?"}, timeout=10)
    assert upload.status_code == 200 and upload.headers["x-vqa-cache"] == "hit"
    assert upload.json()["cached"] is True
    assert upload.json()["answer"] == first.json()["choices"][0]["message"]["content"]
    streamed = b.chat("What color is it?", stream=True)
    assert streamed.headers["x-vqa-cache"] == "hit" and "data: [DONE]" in streamed.text
    assert a.chat("What color is it?", temperature=0.7).headers["x-vqa-cache"] == "bypass"
    assert a.ready()["status"] == "ready" and a.ready()["cache"]["redis"] == "closed"

    redis_server.kill()
    for i in range(5):
        r = a.chat(f"question {i} while Redis is down")
        assert r.status_code == 200 and r.headers["x-vqa-cache"] == "miss"
    assert a.chat("question 0 while Redis is down").headers["x-vqa-cache"] == "hit"  # L1 still serves
    ready = a.ready()
    assert ready["status"] == "degraded" and ready["cache"]["status"] == "degraded"

    redis_server.start()  # same port, empty; the services are not restarted
    wait_for(lambda: a.ready()["status"] == "ready" and b.ready()["status"] == "ready")

    def shared_after_restart(i: int) -> bool:
        question = f"after the restart {i}"
        assert a.chat(question).headers["x-vqa-cache"] == "miss"
        return b.chat(question).headers["x-vqa-cache"] == "hit"  # only Redis can give B this answer

    # On a loaded machine one Redis call can pass its 100 ms timeout and trip a breaker again, so
    # hits must resume within a few tries (the services are never restarted).
    assert any(shared_after_restart(i) for i in range(5))
    metrics = httpx.get(b.url + "/metrics", timeout=5).text
    assert 'vqa_cache_level_hits_total{level="l2"}' in metrics
    # One Redis link per process (cache and rate limits), its breaker exported like the engine's.
    opens = [line for line in httpx.get(a.url + "/metrics", timeout=5).text.splitlines()
             if line.startswith('vqa_breaker_opens_total{backend="redis"}')]
    assert opens and float(opens[0].split()[-1]) >= 1  # it opened during the outage

"""Two `vqa serve` processes sharing one private Redis: hits across processes, x-vqa-cache, and a
Redis outage mid-traffic (every request still 200, /ready degraded, recovery without a restart)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import image_bytes
from tests.redis_fixture import RedisServer
from tests.servers import ServeProcess, started_together
from tests.waiting import wait_until
from vqaserve.images.decode import data_uri

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # two service start-ups: ~25 s idle
PNG = image_bytes(size=(160, 96))


class Service(ServeProcess):
    """`vqa serve` on the scripted engine with the shared Redis as its L2 (and rate-limit store)."""

    def __init__(self, log_path: Path, redis_url: str) -> None:
        super().__init__(log_path, VQA_ENGINE="scripted", VQA_REDIS_URL=redis_url, VQA_SAFETY_IMAGE="off",
                         VQA_CACHE__REDIS_PREFIX="http-test", VQA_CACHE__REDIS_PROBE_INTERVAL_S="0.1",
                         VQA_CACHE__REDIS_TIMEOUT_MS="3000",  # generous: this machine is shared
                         VQA_RATE_LIMIT_RPM="100000")  # the limiter shares the cache's Redis link

    def chat(self, question: str, stream: bool = False, **params: Any) -> httpx.Response:
        body = {"model": "scripted", "stream": stream, **params, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_uri(PNG)}}, {"type": "text", "text": question}]}]}
        return httpx.post(self.url + "/v1/chat/completions", json=body, timeout=10)

    def ready(self) -> dict[str, Any]:
        return httpx.get(self.url + "/ready", timeout=5).json()  # type: ignore[no-any-return]


@pytest.fixture
def services(redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[Service, Service]]:
    a, b = Service(tmp_path / "a.log", redis_server.url), Service(tmp_path / "b.log", redis_server.url)
    with started_together(a, b):
        yield a, b


def test_two_servers_share_one_redis_and_survive_its_outage(
        services: tuple[Service, Service], redis_server: RedisServer) -> None:
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
    wait_until(lambda: a.ready()["status"] == "ready" and b.ready()["status"] == "ready", what="both ready again")

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

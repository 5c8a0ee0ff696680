"""Start-up behind an open port: /health at once, /ready with progress, 503 to answers until loaded.

The slow load is real `vqa serve` stretched by VQA_TEST_LOAD_DELAY_S (read in server/startup.py);
failed loads use engines whose start() fails, in process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import image_bytes
from tests.http_support import LEAKS, ServeProcess, assert_openai_error, make_app, user_msg
from tests.waiting import wait_until, wait_until_async
from vqaserve.engines.scripted import ScriptedEngine
from vqaserve.errors import ConfigError
from vqaserve.server.state import app_state

pytestmark = pytest.mark.integration
DELAY_S = 12  # long enough to poll a busy 2-core machine several times while loading


def test_vqa_serve_opens_its_port_at_once_and_reports_the_load(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with ServeProcess(log, "--engine", "scripted", "--safety-image", "off", wait_path="/health",
                      VQA_TEST_LOAD_DELAY_S=str(DELAY_S)) as server, \
            httpx.Client(base_url=server.url, timeout=30) as http:
        # /health answered (ServeProcess waited for it): the port is open and the model is not loaded.
        first = http.get("/ready")
        assert first.status_code == 503 and first.headers["retry-after"] == "5"
        state = first.json()
        assert state["status"] == "loading" and state["phase"] == "loading the model"
        assert (state["step"], state["steps"], state["engine"]) == (1, 2, "scripted")
        assert 0 <= state["elapsed_s"] < DELAY_S

        vqa = http.post("/v1/vqa", files={"image": ("p.png", image_bytes(), "image/png")},
                        data={"question": "What color is it?"})
        error = assert_openai_error(vqa, 503)
        assert error["code"] == "model_loading" and "loading" in error["message"]
        assert vqa.headers["retry-after"] == "5"
        chat = http.post("/v1/chat/completions", json={"messages": [user_msg("hi")]})
        assert assert_openai_error(chat, 503)["code"] == "model_loading"
        assert http.get("/health").json() == {"status": "ok"}

        time.sleep(1.5)
        later = http.get("/ready").json()
        assert later["status"] == "loading" and later["elapsed_s"] > state["elapsed_s"]

        def loaded() -> bool:
            ready = http.get("/ready")
            if ready.status_code == 200:
                return True
            assert ready.json()["status"] == "loading", ready.text
            return False

        wait_until(loaded, DELAY_S + 60, "the end of the load", every=0.5)
        assert http.get("/ready").json()["status"] == "ready"
        answer = http.post("/v1/vqa", files={"image": ("p.png", image_bytes(), "image/png")},
                           data={"question": "What color is it?"})
        assert answer.status_code == 200 and answer.json()["answer"]
    out = log.read_text()
    assert "start-up 1/2: loading the model" in out and "start-up 2/2: building the pipeline" in out
    assert "start-up done" in out and "VQA_TEST_LOAD_DELAY_S" in out


class FailingEngine(ScriptedEngine):
    def __init__(self, error: Exception) -> None:
        super().__init__(model_id="scripted")
        self.error = error

    async def start(self) -> None:
        await asyncio.sleep(0.05)  # fails after the port opened, as a real load does
        raise self.error


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        yield client


async def test_a_known_load_failure_is_reported_by_ready_without_paths(caplog: pytest.LogCaptureFixture) -> None:
    secret = "/work/models/Qwen3-VL-8B-Instruct"
    app = make_app(FailingEngine(ConfigError(f"model {secret!r} does not fit in memory on cuda:0; "
                                             "`vqa doctor` shows what fits")))
    with caplog.at_level(logging.INFO, logger="vqaserve.server"):
        async with serving(app) as client:
            await wait_until_async(app_state(app).startup.done.is_set, what="the end of start-up")
            ready = await client.get("/ready")
            assert ready.status_code == 503 and "retry-after" not in ready.headers
            body = ready.json()
            assert body["status"] == "failed" and body["phase"] == "loading the model"
            assert body["reason"] == "model '<path>' does not fit in memory on cuda:0; `vqa doctor` shows what fits"
            assert not LEAKS.search(ready.text)
            answer = await client.post("/v1/chat/completions", json={"messages": [user_msg("hi")]})
            assert assert_openai_error(answer, 503)["code"] == "model_load_failed"
            assert "retry-after" not in answer.headers
            assert (await client.get("/health")).status_code == 200
    (line,) = [r for r in caplog.records if "start-up failed" in r.getMessage()]
    assert secret in line.getMessage() and line.exc_info is None  # the operator's log has the path
    assert app_state(app).startup.error.message.startswith(f"model {secret!r}")  # what `vqa serve` prints


async def test_an_unexpected_load_failure_is_logged_with_its_traceback_not_sent(
        caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(FailingEngine(RuntimeError("CUDA error at /opt/torch/lib/x.py:12")))
    with caplog.at_level(logging.INFO, logger="vqaserve.server"):
        async with serving(app) as client:
            await wait_until_async(app_state(app).startup.done.is_set, what="the end of start-up")
            ready = await client.get("/ready")
            assert ready.status_code == 503 and not LEAKS.search(ready.text)
            assert ready.json()["reason"] == ("the engine failed while loading the model (RuntimeError); "
                                              "the server log has the details")
    (line,) = [r for r in caplog.records if "start-up failed" in r.getMessage()]
    assert line.exc_info is not None and "CUDA error" in str(line.exc_info[1])


async def test_answering_routes_get_503_while_loading_then_answer() -> None:
    release = asyncio.Event()

    class SlowEngine(ScriptedEngine):
        async def start(self) -> None:
            await release.wait()

    app = make_app(SlowEngine(model_id="scripted"))
    async with serving(app) as client:
        refused = await client.post("/v1/chat/completions", json={"messages": [user_msg("hi")]})
        assert assert_openai_error(refused, 503)["code"] == "model_loading"
        models = await client.get("/v1/models")
        assert models.status_code == 503 and models.headers["retry-after"] == "5"
        assert (await client.get("/metrics")).status_code == 200  # scrapes go on while loading
        assert (await client.get("/ready")).json()["phase"] == "loading the model"
        release.set()
        await wait_until_async(app_state(app).startup.done.is_set, what="the end of start-up")
        assert (await client.get("/ready")).json()["status"] == "ready"
        assert (await client.get("/v1/models")).json()["data"][0]["id"] == "scripted"

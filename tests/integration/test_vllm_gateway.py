"""The production path against a real vLLM: `vqa serve --engine upstream` in front of vLLM (CPU build).

One vLLM serves the whole session (tests/vllm_support.py); gateways are `vqa serve` subprocesses as
docs/deploy.md runs them. The double (upstream_double.py) stays for faults vLLM cannot be made to show.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.http_support import ServeProcess
from tests.vllm_support import ADAPTER, ask, catalogue, chat_body, content, gateway_env
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.vllm]
MODEL = "shop-toy"


@pytest.fixture(scope="module")
def gateway(vllm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    log = tmp_path_factory.mktemp("gw") / "gateway.log"
    with ServeProcess(log, **gateway_env(vllm.url)) as gw:
        yield gw


def sse(resp: httpx.Response) -> list[dict]:
    events = []
    for line in resp.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(json.loads(line[6:]))
    return events


def test_gateway_answers_equal_vllm_direct_answers(vllm, gateway: ServeProcess) -> None:
    samples = catalogue("test", 16)
    direct = [content(ask(vllm.url, chat_body(png, q, MODEL))) for png, q, _ in samples]
    through = [content(ask(gateway.url, chat_body(png, q, MODEL, cache=False))) for png, q, _ in samples]
    assert through == direct
    assert sum(a == gold for a, (_, _, gold) in zip(direct, samples, strict=True)) >= 6  # a working model
    ready = httpx.get(gateway.url + "/ready", timeout=10).json()
    assert ready["status"] == "ready" and ready["engine"]["model"] == MODEL


def test_stream_is_relayed_chunk_by_chunk_with_vllms_usage(vllm, gateway: ServeProcess) -> None:
    from openai import OpenAI

    png, question, _ = catalogue("test", 1, seed=7)[0]
    body = chat_body(png, "Describe this product.", MODEL)
    plain = ask(vllm.url, body).json()
    client = OpenAI(base_url=gateway.url + "/v1", api_key="unused")
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=body["messages"], temperature=0, max_tokens=24, stream=True,
        stream_options={"include_usage": True}, extra_body={"cache": False}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 3  # relayed as vLLM produced them, not one block at the end
    assert "".join(pieces) == plain["choices"][0]["message"]["content"]
    usage = next(c.usage for c in chunks if c.usage is not None)
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        plain["usage"]["prompt_tokens"], plain["usage"]["completion_tokens"])


def test_adapters_are_served_by_name_and_reach_vllms_adapter(vllm, gateway: ServeProcess) -> None:
    listed = [m["id"] for m in httpx.get(gateway.url + "/v1/models", timeout=10).json()["data"]]
    assert listed == [MODEL, ADAPTER]
    samples = [s for s in catalogue("adapter", 24) if "product" in s[1] or "什么商品" in s[1] or "这是什么" in s[1]]
    samples = samples or catalogue("adapter", 8)
    direct = [content(ask(vllm.url, chat_body(png, q, ADAPTER))) for png, q, _ in samples]
    through = [content(ask(gateway.url, chat_body(png, q, ADAPTER, cache=False))) for png, q, _ in samples]
    base = [content(ask(gateway.url, chat_body(png, q, MODEL, cache=False))) for png, q, _ in samples]
    assert through == direct
    assert through != base  # the adapter was applied upstream, not the base model


def test_vllms_own_errors_reach_the_client_as_documented(vllm, tmp_path: Path) -> None:
    png, question, _ = catalogue("test", 1)[0]
    env = gateway_env(vllm.url, VQA_MAX_IMAGES="12", VQA_ADAPTERS=f"ghost=not-served,{ADAPTER}={ADAPTER}")
    with ServeProcess(tmp_path / "gw.log", **env) as gw:
        body = chat_body(png, question, MODEL, cache=False)
        part = body["messages"][0]["content"][0]
        body["messages"][0]["content"] = [part] * 9 + [body["messages"][0]["content"][1]]
        resp = ask(gw.url, body)  # vLLM's --limit-mm-per-prompt is 8 images
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["type"] == "invalid_request_error"

        resp = ask(gw.url, chat_body(png, question, "ghost"))  # listed by the gateway, not served by vLLM
        assert resp.status_code == 404, resp.text
        assert resp.json()["error"]["code"] == "model_not_found"

        long_text = "这件外套适合什么场合穿？" * 300  # ~630 tokens; four turns of it pass the 2,048-token context
        body = chat_body(png, long_text, MODEL, cache=False)
        body["messages"] = [{"role": "system", "content": long_text}, {"role": "user", "content": long_text},
                            {"role": "assistant", "content": long_text}, *body["messages"]]
        resp = ask(gw.url, body)
        assert resp.status_code == 400, resp.text
        message = resp.json()["error"]["message"]
        assert "/" not in message.replace("n/a", "") and ".py" not in message  # no paths leak

        assert content(ask(gw.url, chat_body(png, question, MODEL))) != ""  # still up and answering


def test_a_client_that_leaves_mid_stream_makes_vllm_abort(vllm, gateway: ServeProcess) -> None:
    png, question, _ = catalogue("test", 1)[0]
    wanted = 1900  # ~5 s of generation here: a client leaving after a few chunks must cut it short
    before = vllm.metrics().get("vllm:generation_tokens_total", 0.0)
    body = chat_body(png, question, MODEL, max_tokens=wanted, ignore_eos=True, stream=True, cache=False)
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=60) as resp:
        assert resp.status_code == 200
        # Leave at the first chunk with text. (Not after N chunks: after its short answer shop-toy
        # mostly emits end-of-turn tokens, which stream as nothing, so a client waiting for a third
        # chunk was sometimes still waiting when vLLM had generated everything.)
        for line in resp.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                break
    # The connection is closed: the gateway closes its upstream call and vLLM aborts the generation.
    wait_until(lambda: vllm.metrics().get("vllm:num_requests_running", 0) == 0, 15,
             "vLLM still runs the request of a client that left")
    time.sleep(1.0)
    generated = vllm.metrics().get("vllm:generation_tokens_total", 0.0) - before
    assert 0 < generated < 0.8 * wanted, f"vLLM generated {generated:.0f} of {wanted} tokens for a client that left"


def test_a_deadline_ends_the_stream_with_an_error_not_a_normal_end(vllm, tmp_path: Path) -> None:
    png, question, _ = catalogue("test", 1)[0]
    with ServeProcess(tmp_path / "gw.log", **gateway_env(vllm.url, VQA_REQUEST_TIMEOUT_S="1.5")) as gw:
        body = chat_body(png, question, MODEL, max_tokens=1500, ignore_eos=True, stream=True, cache=False)
        with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=60) as resp:
            events = sse(resp)
    finishes = [c["choices"][0].get("finish_reason") for c in events if c.get("choices")]
    assert "stop" not in finishes and "length" not in finishes
    assert events[-1]["error"]["code"] == "deadline_exceeded"
    wait_until(lambda: vllm.metrics().get("vllm:num_requests_running", 0) == 0, 15,
             "vLLM still runs the request whose deadline passed")


def test_vllm_killed_under_load_opens_the_breaker_and_the_gateway_recovers(
        vllm, gateway: ServeProcess, tmp_path: Path) -> None:
    """Runs last: it restarts the session's vLLM. A gateway started while vLLM is down waits for it."""
    png, question, _ = catalogue("test", 1)[0]
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                statuses.append(ask(gateway.url, chat_body(png, question, MODEL, cache=False), timeout=30)
                                .status_code)
            except httpx.HTTPError:
                statuses.append(-1)
            time.sleep(0.05)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        wait_until(lambda: statuses.count(200) >= 3, 30, "the gateway did not answer under load")
        vllm.kill()
        def breaker_open() -> bool:
            ready = httpx.get(gateway.url + "/ready", timeout=10)
            return ready.status_code == 503 and ready.json()["engine"]["breaker"]["state"] == "open"

        wait_until(breaker_open, 30, "/ready did not report the dead model server with an open breaker")
        # Start order does not matter: a gateway started now, with vLLM down, starts and waits.
        with ServeProcess(tmp_path / "late.log", wait_path="/health", **gateway_env(vllm.url)) as late:
            # The port opens before the engine is built (/ready "loading"); once it is, /ready says why.
            wait_until(lambda: httpx.get(late.url + "/ready", timeout=10).json()["status"] != "loading", 30,
                     "the late gateway did not finish starting")
            state = httpx.get(late.url + "/ready", timeout=10)
            assert state.status_code == 503
            assert "waiting for the model server" in state.json()["engine"]["reason"]
            vllm.start()
            for gw in (gateway, late):
                wait_until(lambda g=gw: httpx.get(g.url + "/ready", timeout=10).status_code == 200, 60,
                         "the gateway did not become ready when vLLM came back")
            assert content(ask(late.url, chat_body(png, question, MODEL))) != ""
        seen = len(statuses)
        wait_until(lambda: statuses[seen:].count(200) >= 3, 60, "the loaded gateway did not recover")
    finally:
        stop.set()
        worker.join(30)
        if vllm.proc is None:
            vllm.start()
    assert 503 in statuses and -1 not in statuses  # failures were answered, never dropped connections

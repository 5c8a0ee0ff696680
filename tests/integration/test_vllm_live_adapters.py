"""Adapters put live through the gateway on a real vLLM (runtime LoRA endpoints), no restart of either.

The session's vLLM (tests/vllm_support.py) serves shop-toy with LoRA on, so scripts/vllm.sh turned its
runtime LoRA endpoints on too. The bundled sunglasses adapter is loaded at run time under another
name through the gateway's admin API: listed, answering as vLLM's start-up copy of it does (and as
the in-process engine does), reloaded with other weights while a request is in flight, unloaded.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.http_support import ServeProcess, sse_payloads
from tests.vllm_support import ADAPTER, ask, catalogue, chat_body, content, gateway_env
from tests.waiting import wait_until as wait_for
from vqaserve.bench.vllm_server import BUNDLED

pytestmark = [pytest.mark.integration, pytest.mark.vllm]
MODEL, LIVE, ADMIN = "shop-toy", "sunglasses-live", "vllm-admin-key-0123"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def gateway(vllm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:  # noqa: F811
    log = tmp_path_factory.mktemp("gw-live") / "gateway.log"
    with ServeProcess(log, **gateway_env(vllm.url, VQA_ADMIN_KEYS=ADMIN)) as gw:
        yield gw


@pytest.fixture(scope="module")
def silent(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The bundled adapter with every LoRA B zeroed: other weights, which answer as the base model does."""
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("silent") / "adapter"
    shutil.copytree(BUNDLED / ADAPTER, out)
    tensors = load_file(str(out / "adapter_model.safetensors"))
    save_file({k: v * 0 if "lora_B" in k or "lora_embedding_B" in k else v for k, v in tensors.items()},
              str(out / "adapter_model.safetensors"))
    return str(out)


def admin(gw: ServeProcess, method: str, path: str, body: Any = None) -> Any:
    resp = httpx.request(method, gw.url + path, json=body, headers=AS_ADMIN, timeout=300)
    assert resp.status_code == 200, resp.text
    return resp.json()


def upstream_ids(vllm_url: str) -> list[str]:
    return [m["id"] for m in httpx.get(vllm_url + "/v1/models", timeout=10).json()["data"]]


def samples() -> list[tuple[bytes, str, str]]:
    picked = [s for s in catalogue("adapter", 24) if "product" in s[1] or "什么商品" in s[1] or "这是什么" in s[1]]
    return (picked or catalogue("adapter", 8))[:6]


async def in_process(asked: list[tuple[bytes, str, str]]) -> list[str]:
    """The same questions to the in-process engine with the adapter (greedy, float32, the same pixels)."""
    from vqaserve.settings import load_settings
    from vqaserve.types import GenerationParams, ImageRef, Part, Question, Turn
    from vqaserve.wiring import build_pipeline

    settings = load_settings(model=MODEL, adapters={"sg": str(BUNDLED / ADAPTER)}, safety_image="off",
                             min_pixels=16384, max_pixels=25600, dtype="float32")
    pipeline = build_pipeline(settings)
    await pipeline.engine.start()
    try:
        out = []
        for png, question, _ in asked:
            parts = [Part(image_ref=ImageRef(kind="bytes", payload=png)), Part(text=question)]
            answer = await pipeline.answer(Question(turns=[Turn(role="user", parts=parts)], model="sg",
                                                    params=GenerationParams(max_new_tokens=24)))
            out.append(answer.text)
        return out
    finally:
        for close in pipeline.c.closers:
            await close()
        await pipeline.engine.close()


def test_an_adapter_loaded_at_run_time_is_listed_answers_as_served_and_unloads(vllm, gateway: ServeProcess) -> None:  # noqa: F811
    loaded = admin(gateway, "POST", "/admin/adapters", {"name": LIVE, "path": str(BUNDLED / ADAPTER)})
    try:
        assert loaded["status"] == "loaded" and loaded["version"].startswith(f"{LIVE}@")
        listed = [m["id"] for m in httpx.get(gateway.url + "/v1/models", timeout=10).json()["data"]]
        assert listed == [MODEL, ADAPTER, LIVE]
        assert loaded["version"] in upstream_ids(vllm.url)  # vLLM holds it under its version's name
        asked = samples()
        live = [ask(gateway.url, chat_body(png, q, LIVE, cache=False)) for png, q, _ in asked]
        assert {r.headers["x-vqa-model"] for r in live} == {loaded["version"]}
        static = [content(ask(vllm.url, chat_body(png, q, ADAPTER))) for png, q, _ in asked]
        assert [content(r) for r in live] == static  # the same weights vLLM loaded at start-up
        local = asyncio.run(in_process(asked))
        same = sum(a == b for a, b in zip(static, local, strict=True))
        assert same >= len(asked) - 1, list(zip(static, local, strict=True))  # bf16 vs float32: 199/200 in eval.md
    finally:
        admin(gateway, "DELETE", f"/admin/adapters/{LIVE}")
    wait_for(lambda: loaded["version"] not in upstream_ids(vllm.url), 30, "vLLM unloaded it")
    listed = [m["id"] for m in httpx.get(gateway.url + "/v1/models", timeout=10).json()["data"]]
    assert listed == [MODEL, ADAPTER]
    png, question, _ = asked[0]
    assert ask(gateway.url, chat_body(png, question, LIVE)).status_code == 404


def test_a_reload_while_a_request_is_in_flight_fails_nothing(vllm, gateway: ServeProcess, silent: str) -> None:  # noqa: F811
    old = admin(gateway, "POST", "/admin/adapters", {"name": LIVE, "path": str(BUNDLED / ADAPTER)})["version"]
    png, question, _ = samples()[0]
    done: dict[str, httpx.Response] = {}
    body = chat_body(png, question, LIVE, max_tokens=800, ignore_eos=True, stream=True, cache=False)
    streaming = threading.Thread(target=lambda: done.update(r=ask(gateway.url, body, timeout=300)))
    try:
        streaming.start()
        wait_for(lambda: any(a["in_flight"] == 1 for a in admin(gateway, "GET", "/admin/adapters")["adapters"]),
                 60, "the long request admitted")
        reloaded = admin(gateway, "POST", "/admin/adapters", {"name": LIVE, "path": silent})
        assert (reloaded["status"], reloaded["replaced"]) == ("reloaded", old)
        states = {a["version"]: (a["state"], a["in_flight"])
                  for a in admin(gateway, "GET", "/admin/adapters")["adapters"]}
        assert states[reloaded["version"]] == ("serving", 0)
        if streaming.is_alive():  # (the stream, ~3 s of generation here, may have ended on a slow machine)
            assert states[old] == ("retiring", 1) and old in upstream_ids(vllm.url)
        after = ask(gateway.url, chat_body(png, question, LIVE, cache=False))
        assert after.headers["x-vqa-model"] == reloaded["version"]
        assert content(after) == content(ask(gateway.url, chat_body(png, question, MODEL, cache=False)))
        streaming.join(300)
        events = sse_payloads(done["r"].text)
        assert done["r"].status_code == 200 and done["r"].headers["x-vqa-model"] == old
        assert events[-1] == "[DONE]" and not any("error" in e for e in events[:-1])
        assert [e["choices"][0]["finish_reason"] for e in events[:-1] if e["choices"]][-1] == "length"
        wait_for(lambda: old not in upstream_ids(vllm.url), 30, "vLLM unloaded the old version once unused")
    finally:
        streaming.join(300)
        admin(gateway, "DELETE", f"/admin/adapters/{LIVE}")
    wait_for(lambda: not any(i.startswith(f"{LIVE}@") for i in upstream_ids(vllm.url)), 30, "vLLM cleaned up")

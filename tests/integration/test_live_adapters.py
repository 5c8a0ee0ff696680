"""Adapters put live on a running in-process service (the tiny Qwen3-VL, two tiny LoRA adapters): loads,
reloads, canary routes and unloads while clients keep asking, with no failed request; requests in
flight finish on the weights they were admitted on; a reload never answers from the old weights' cache."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tiny_vlm import TINY_MAX_PIXELS, TINY_MIN_PIXELS

from tests.conftest import image_bytes
from tests.http_support import LiveServer, random_lora_adapter, sse_payloads
from tests.waiting import wait_until as wait_for
from vqaserve.images.decode import data_uri
from vqaserve.server.state import app_state
from vqaserve.settings import load_settings

pytestmark = pytest.mark.integration
ADMIN = "admin-key-for-tests"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two LoRA adapters of the tiny model with different (random, non-zero) weights."""
    out = {}
    for seed, name in enumerate(("a", "b")):
        out[name] = random_lora_adapter(str(tiny_model_dir), str(tmp_path_factory.mktemp(f"lora-{name}")), seed=seed)
    return out


@pytest.fixture(scope="module")
def live(tiny_model_dir: Path) -> Iterator[LiveServer]:
    from vqaserve.server.app import create_app

    settings = load_settings(model=str(tiny_model_dir), safety_image="off", admin_keys=ADMIN, max_new_tokens=8,
                             min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS)
    with LiveServer(create_app(settings)) as server:
        yield server


def chat(url: str, model: str, colour: tuple[int, int, int], text: str = "What is it?", **body: Any) -> httpx.Response:

    uri = data_uri(image_bytes(size=(64, 64), color=colour))
    content = [{"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": text}]
    return httpx.post(url + "/v1/chat/completions", timeout=120,
                      json={"model": model, "messages": [{"role": "user", "content": content}], **body})


def answer(resp: httpx.Response) -> str:
    assert resp.status_code == 200, resp.text
    return str(resp.json()["choices"][0]["message"]["content"])


def admin(url: str, method: str, path: str, body: Any = None) -> Any:
    resp = httpx.request(method, url + path, json=body, headers=AS_ADMIN, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp.json()


def state(url: str, name: str) -> dict[str, dict[str, Any]]:
    """The versions of adapter `name`, by state."""
    return {a["state"]: a for a in admin(url, "GET", "/admin/adapters")["adapters"] if a["name"] == name}


def base_model(url: str) -> str:
    return str(httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"])


class Clients:
    """Four clients asking about new pictures (every third streams) until stopped; every reply kept."""

    def __init__(self, url: str, model: str) -> None:
        self.url, self.model = url, model
        self.done: list[tuple[int, str]] = []  # (status, x-vqa-model)
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(4)]

    def _run(self, client: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            colour = (client * 60 + 10, n % 256, (n // 256) % 256)
            try:
                resp = chat(self.url, self.model, colour, stream=n % 3 == 0)
                ok = resp.status_code == 200 and (n % 3 or sse_payloads(resp.text)[-1] == "[DONE]")
                if n % 3 == 0 and ok:
                    ok = not any("error" in e for e in sse_payloads(resp.text)[:-1])
            except httpx.HTTPError as exc:
                resp, ok = None, False
                error = repr(exc)
            with self.lock:
                if resp is not None and ok:
                    self.done.append((resp.status_code, resp.headers["x-vqa-model"]))
                else:
                    self.failures.append(resp.text[:300] if resp is not None else error)

    def count(self) -> int:
        with self.lock:
            return len(self.done) + len(self.failures)

    def __enter__(self) -> Clients:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)

    def after_more(self, n: int) -> None:
        """Let at least `n` more requests complete (so each change happens among requests)."""
        target = self.count() + n
        wait_for(lambda: self.count() >= target, 120, f"{n} more requests")


def test_load_canary_reload_and_unload_under_load_fail_no_request(live: LiveServer, adapters: dict[str, str]) -> None:
    url, base = live.url, base_model(live.url)
    with Clients(url, base) as clients:
        clients.after_more(2)
        first = admin(url, "POST", "/admin/adapters", {"name": "v2", "path": adapters["a"]})
        clients.after_more(2)
        admin(url, "PUT", f"/admin/routes/{base}", {"to": {"v2": 50}})
        clients.after_more(6)
        second = admin(url, "POST", "/admin/adapters", {"name": "v2", "path": adapters["b"]})
        clients.after_more(6)
        admin(url, "PUT", f"/admin/routes/{base}", {"to": {"v2": 100}})
        clients.after_more(3)
        admin(url, "DELETE", f"/admin/routes/{base}")
        admin(url, "DELETE", "/admin/adapters/v2")
        clients.after_more(3)
    assert clients.failures == []
    assert (first["status"], second["status"], second["replaced"]) == ("loaded", "reloaded", first["version"])
    answered = {served for _, served in clients.done}
    assert {base, first["version"], second["version"]} <= answered  # all three answered some of them
    wait_for(lambda: admin(url, "GET", "/admin/adapters")["adapters"] == [], 60, "old versions detached")
    engine = _engine(live)
    assert engine._peft.peft_names() == []  # every version's PEFT weights are gone


class WorkerHeld:
    """Holds the engine's one worker thread: what is admitted meanwhile waits (no timing in the tests)."""

    def __init__(self, live: LiveServer) -> None:
        self.engine = _engine(live)
        self.gate = threading.Event()

    def __enter__(self) -> WorkerHeld:
        wait_for(lambda: self.queued() == 0, 60, "the worker's earlier jobs (e.g. a detach) started")
        self.engine._executor.submit(self.gate.wait)
        return self

    def queued(self) -> int:
        """Jobs waiting for the worker (generations, adapter loads)."""
        return int(self.engine._executor._work_queue.qsize())

    def __exit__(self, *exc: object) -> None:
        self.gate.set()


def test_admitted_requests_finish_on_their_weights_and_a_reload_misses_the_cache(
        live: LiveServer, adapters: dict[str, str]) -> None:
    url = live.url
    a = admin(url, "POST", "/admin/adapters", {"name": "v3", "path": adapters["a"]})["version"]
    short = {"temperature": 0, "max_tokens": 12}
    reference = answer(chat(url, "v3", (5, 6, 7), cache=False, **short))  # what v3@a says to it
    cached = chat(url, "v3", (9, 9, 9), **short)
    assert chat(url, "v3", (9, 9, 9), **short).headers["x-vqa-cache"] == "hit"

    results: dict[str, Any] = {}
    threads = [threading.Thread(target=lambda k=k: results.update({k: chat(url, "v3", (5, 6, 7), cache=False,
                                                                          **short)})) for k in ("first", "second")]
    threads.append(threading.Thread(target=lambda: results.update(
        reload=admin(url, "POST", "/admin/adapters", {"name": "v3", "path": adapters["b"]}))))
    with WorkerHeld(live) as worker:
        threads[0].start()  # handed to the engine: it waits for the worker
        wait_for(lambda: state(url, "v3")["serving"]["in_flight"] == 1 and worker.queued() == 1, 60,
                 "the first request at the worker")
        threads[1].start()  # admitted on v3@a; waits in the batcher for the first's batch to end
        wait_for(lambda: state(url, "v3")["serving"]["in_flight"] == 2, 60, "the second request admitted")
        threads[2].start()  # the reload: v3@b's weights load on the worker after the first request
        wait_for(lambda: worker.queued() == 2, 60, "the reload at the worker")
    for thread in threads:
        thread.join(120)
    b = results["reload"]["version"]
    assert results["reload"]["replaced"] == a
    for key in ("first", "second"):  # both admitted on v3@a: answered by it, the second after the switch
        assert results[key].headers["x-vqa-model"] == a and answer(results[key]) == reference
    after = chat(url, "v3", (5, 6, 7), cache=False, **short)
    assert after.headers["x-vqa-model"] == b and answer(after) != reference

    again = chat(url, "v3", (9, 9, 9), **short)
    assert again.headers["x-vqa-cache"] == "miss" and again.headers["x-vqa-model"] == b
    assert answer(again) != answer(cached)  # the new weights' own answer, not the old entry
    wait_for(lambda: set(state(url, "v3")) == {"serving"}, 60, "v3@a detached")
    admin(url, "DELETE", "/admin/adapters/v3")
    wait_for(lambda: state(url, "v3") == {}, 60, "v3@b detached")


def test_unload_lets_the_request_in_flight_finish_and_refuses_new_ones(live: LiveServer,
                                                                       adapters: dict[str, str]) -> None:
    url = live.url
    version = admin(url, "POST", "/admin/adapters", {"name": "v4", "path": adapters["a"]})["version"]
    results: dict[str, httpx.Response] = {}
    streaming = threading.Thread(target=lambda: results.update(r=chat(
        url, "v4", (1, 1, 1), max_tokens=12, ignore_eos=True, temperature=0, stream=True, cache=False)))
    with WorkerHeld(live):  # the stream cannot end before the unload
        streaming.start()
        wait_for(lambda: state(url, "v4")["serving"]["in_flight"] == 1, 60, "the stream admitted")
        admin(url, "DELETE", "/admin/adapters/v4")
        refused = chat(url, "v4", (1, 1, 1))
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
        assert state(url, "v4")["retiring"]["in_flight"] == 1 and "serving" not in state(url, "v4")
    streaming.join(120)
    events = sse_payloads(results["r"].text)
    assert results["r"].headers["x-vqa-model"] == version and events[-1] == "[DONE]"
    assert [e["choices"][0]["finish_reason"] for e in events[:-1] if e["choices"]][-1] == "length"
    wait_for(lambda: state(url, "v4") == {}, 60, "v4 detached")


def _engine(live: Any) -> Any:
    pipeline = app_state(live.server.config.app).pipeline
    assert pipeline is not None
    return pipeline.engine

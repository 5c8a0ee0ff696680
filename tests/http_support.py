"""Helpers for the HTTP tests: a scripted app, picture data URIs, SSE parsing, leak checks."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from typing import Any

from tests.conftest import image_bytes
from vqaserve.engines.scripted import ScriptedEngine
from vqaserve.server.state import app_state
from vqaserve.settings import load_settings
from vqaserve.types import EngineRequest

# What must never reach a client: tracebacks, source paths, memory addresses.
LEAKS = re.compile(r"Traceback|File \"|/work/|site-packages|\.py\b|0x[0-9a-fA-F]{6,}")


class RecordingEngine(ScriptedEngine):
    """The scripted engine, also keeping every EngineRequest it was given."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.requests: list[EngineRequest] = []

    async def generate(self, batch):  # type: ignore[no-untyped-def]
        self.requests.extend(batch)
        return await super().generate(batch)


def make_app(engine: ScriptedEngine | None = None, **settings: Any):  # type: ignore[no-untyped-def]
    from vqaserve.server.app import create_app

    settings.setdefault("engine", "scripted")
    # NudeNet costs ~0.1-0.3 s per image; tests about safety pass their own checker (and
    # tests/safety/test_image_checkers.py runs the real one).
    settings.setdefault("safety_image", "off")
    engine = engine or RecordingEngine(model_id="scripted", adapter_names=["sunglasses"])
    return create_app(load_settings(**settings), engine=engine)


def data_uri(**kw: Any) -> str:
    return "data:image/png;base64," + base64.b64encode(image_bytes(**kw)).decode()


def user_msg(text: str, images: int = 1) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": data_uri()}}
                                   for _ in range(images)]
    parts.append({"type": "text", "text": text})
    return {"role": "user", "content": parts}


def sse_payloads(text: str) -> list[Any]:
    """The `data:` payloads of an SSE body, JSON-decoded except the final [DONE] marker."""
    out: list[Any] = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        payload = block[len("data: "):]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def assert_openai_error(response: Any, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert not LEAKS.search(response.text), response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["type"]
    if param is not None:
        assert error["param"] == param, error
    return error  # type: ignore[no-any-return]


class LiveServer:
    """A real uvicorn serving `app` on a free loopback port, in a thread; stopped on exit."""

    def __init__(self, app: Any, **uvicorn_options: Any) -> None:
        import uvicorn

        from tests.conftest import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False, lifespan="on", **uvicorn_options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="live-uvicorn", daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        # The port opens before the model has loaded (server/startup.py): wait for the load too.
        startup = app_state(self.server.config.app).startup
        if not startup.done.wait(timeout=600) or startup.failed:
            self.__exit__()
            raise RuntimeError(f"the app did not start: {startup.status()}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def bundled_model_available() -> bool:
    """shop-toy is committed on the model branch; until it is merged, its tests skip."""
    import importlib.util
    from pathlib import Path

    from vqaserve.settings import resolve_model_path

    return (Path(resolve_model_path("shop-toy")) / "config.json").is_file() and \
        importlib.util.find_spec("vqaserve.engines.transformers") is not None


def bundled_adapters() -> dict[str, str]:
    """LoRA adapters shipped next to the bundled model (a folder with adapter_config.json)."""
    from vqaserve.settings import BUNDLED_MODELS

    if not BUNDLED_MODELS.is_dir():
        return {}
    return {d.name: str(d) for d in sorted(BUNDLED_MODELS.iterdir()) if (d / "adapter_config.json").is_file()}


def catalogue_sample(split: str, qtype: str, lang: str = "en", index: int = 0) -> tuple[bytes, str, str]:
    """(png bytes, question, exact answer) from the synthetic shop catalogue (SHOP_CATALOGUE.md)."""
    import pytest

    try:
        from vqaserve.train import synthetic
    except ImportError:
        pytest.skip("the synthetic catalogue (vqaserve.train.synthetic) is not on this branch yet")
    sample = synthetic.make_sample(split, 0, index, qtype=qtype, lang=lang)
    return synthetic.png_bytes(sample.image), sample.question, sample.answer


def random_lora_adapter(model_dir: str, out_dir: str, seed: int = 0) -> str:
    """A LoRA adapter with random (not zero) weights for a model dir: it must change the answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out_dir)
    return out_dir


class ServeProcess:
    """`vqa serve` as a user runs it (a subprocess on a free port); its log goes to `log_path`."""

    def __init__(self, log_path: Any, *args: str, ready_timeout: float = 240, wait_path: str = "/ready",
                 **env: str) -> None:
        from tests.conftest import free_port

        self.wait_path = wait_path  # "/health" for a server that must start before its upstream is up
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args, self.env, self.log_path, self.ready_timeout = args, env, log_path, ready_timeout

    def __enter__(self) -> ServeProcess:
        import subprocess

        import httpx

        from tests.conftest import subprocess_env, vqa_cmd

        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in __exit__
        self.proc = subprocess.Popen(vqa_cmd("serve", "--port", str(self.port), *self.args),
                                     env=subprocess_env(**self.env), stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if self.proc.poll() is not None:
                self.__exit__()
                raise RuntimeError(f"vqa serve exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.get(self.url + self.wait_path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"vqa serve did not become ready; see {self.log_path}")
            time.sleep(0.25)

    def __exit__(self, *exc: object) -> None:
        import subprocess

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

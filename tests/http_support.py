"""Helpers for the HTTP tests: a scripted app, chat messages, SSE parsing, leak checks (the servers: servers.py)."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.conftest import image_bytes
from tests.servers import LiveServer, ServeProcess  # noqa: F401 - the launchers, imported from here by many tests
from vqaserve.engines.scripted import ScriptedEngine
from vqaserve.images.decode import data_uri
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


def user_msg(text: str, images: int = 1) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": data_uri(image_bytes())}}
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


def bundled_adapters() -> dict[str, str]:
    """LoRA adapters shipped next to the bundled model (a folder with adapter_config.json)."""
    from vqaserve.settings import BUNDLED_MODELS

    if not BUNDLED_MODELS.is_dir():
        return {}
    return {d.name: str(d) for d in sorted(BUNDLED_MODELS.iterdir()) if (d / "adapter_config.json").is_file()}


def catalogue_sample(split: str, qtype: str, lang: str = "en", index: int = 0) -> tuple[bytes, str, str]:
    """(png bytes, question, exact answer) from the synthetic shop catalogue (SHOP_CATALOGUE.md)."""
    from vqaserve.train import synthetic

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

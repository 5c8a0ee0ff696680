"""Helpers for the HTTP tests: a scripted app, picture data URIs, SSE parsing, leak checks."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from conftest import image_bytes
from vqaserve.engines.scripted import ScriptedEngine
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

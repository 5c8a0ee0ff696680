"""HTTP test helpers for the safety tests: a scripted app, SSE parsing, OpenAI error checks.

Kept here (not imported from another folder's helpers) so tests/safety runs on its own and in the
whole suite alike.
"""

from __future__ import annotations

import json
import re
from typing import Any

from vqaserve.engines.scripted import ScriptedEngine
from vqaserve.settings import load_settings
from vqaserve.types import EngineRequest

# What must never reach a client: tracebacks, source paths, memory addresses.
LEAKS = re.compile(r"Traceback|File \"|/work/|/tmp/|site-packages|\.py\b|0x[0-9a-fA-F]{6,}")


class RecordingEngine(ScriptedEngine):
    """The scripted engine, also keeping every EngineRequest it was given."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.requests: list[EngineRequest] = []

    async def generate(self, batch):  # type: ignore[no-untyped-def]
        self.requests.extend(batch)
        return await super().generate(batch)


def make_app(engine: ScriptedEngine, **settings: Any) -> Any:
    from vqaserve.server.app import create_app

    settings.setdefault("engine", "scripted")
    return create_app(load_settings(**settings), engine=engine)


def sse_payloads(text: str) -> list[Any]:
    """The `data:` payloads of an SSE body, JSON-decoded except the final [DONE] marker."""
    out: list[Any] = []
    for block in text.split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            payload = block[len("data: "):]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def assert_openai_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert not LEAKS.search(response.text), response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["message"], error
    return error  # type: ignore[no-any-return]

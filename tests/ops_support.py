"""Helpers for the operations tests: `vqa serve` on the scripted engine, our app on a live uvicorn in a
thread with the project's read deadlines, chat bodies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import image_bytes
from tests.servers import LiveServer, ServeProcess
from vqaserve.images.decode import data_uri
from vqaserve.server.state import app_state


def chat_body(text: str, images: int = 1, stream: bool = False, png: bytes | None = None,
              model: str | None = "scripted") -> dict[str, Any]:
    url = data_uri(png or image_bytes())
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": url}} for _ in range(images)]
    parts.append({"type": "text", "text": text})
    body: dict[str, Any] = {"messages": [{"role": "user", "content": parts}], "stream": stream}
    if model is not None:
        body["model"] = model
    return body


def scripted_serve(tmp: Path, *args: str, **env: str) -> ServeProcess:
    """`vqa serve --engine scripted` (no image check, warnings only), entered once /health answers
    (/ready needs a key when the server has API keys)."""
    return ServeProcess(tmp / "serve.log", "--engine", "scripted", "--safety-image", "off", "--log-level",
                        "warning", *args, wait_path="/health", **env)


class ThreadServer(LiveServer):
    """An app on a real uvicorn in a thread of the test process, with this project's read deadlines."""

    def __init__(self, app: Any, settings: Any = None) -> None:
        from vqaserve.server.limits import uvicorn_limits

        super().__init__(app, **uvicorn_limits(settings or app_state(app).settings))

"""A small OpenAI-compatible model server for tests: records what it receives, misbehaves on demand.

It answers "saw N image(s) WxH[,WxH]: QUESTION", decoding each data-URI image so tests can check what
actually travelled. `behaviour` switches it: an HTTP status (with Retry-After), a delay, a stream of
given chunks (with a pause between them), a disconnect before answering. Runs in a thread on a port
reserved from construction (connections are refused until `start()`: a dead upstream until then).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from PIL import Image

from tests.servers import ThreadedUvicorn


@dataclass
class Behaviour:
    status: int = 200
    error_message: str = "something is wrong"
    retry_after: str | None = None
    delay_s: float = 0.0
    chunks: list[str] | None = None  # stream these text pieces (None: split the answer by words)
    chunk_pause_s: float = 0.0
    finish_reason: str = "stop"
    models: list[str | dict[str, Any]] = field(default_factory=lambda: ["double-model"])


@dataclass
class Received:
    body: dict[str, Any]
    headers: dict[str, str]
    images: list[tuple[str, tuple[int, int], str | None]]  # (mime, size, uuid)


class UpstreamDouble:
    def __init__(self) -> None:
        self.behaviour = Behaviour()
        self.received: list[Received] = []
        self.disconnects = 0  # requests whose client went away before the answer was complete
        self.completed = 0
        self.app = self._build()
        self._server = ThreadedUvicorn(self.app, lifespan="off")
        self.port = self._server.port
        self.url = f"http://127.0.0.1:{self.port}/v1"

    # --- what it answers ---------------------------------------------------------------------------
    @staticmethod
    def _images(body: dict[str, Any]) -> list[tuple[str, tuple[int, int], str | None]]:
        found = []
        for message in body.get("messages", []):
            content = message.get("content")
            if not isinstance(content, list):
                continue
            for part in content:
                if part.get("type") != "image_url":
                    continue
                url = part["image_url"]["url"]
                head, _, data = url.partition(",")
                mime = head.removeprefix("data:").split(";")[0]
                with Image.open(io.BytesIO(base64.b64decode(data))) as img:
                    found.append((mime, img.size, part.get("uuid")))
        return found

    def answer_for(self, received: Received) -> str:
        question = ""
        for message in received.body.get("messages", []):
            content = message.get("content")
            if isinstance(content, str):
                question = content
            else:
                question = "".join(p.get("text", "") for p in content if p.get("type") == "text")
        sizes = ",".join(f"{w}x{h}" for _, (w, h), _ in received.images)
        return f"saw {len(received.images)} image(s) {sizes}: {question}".replace("  ", " ")

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models() -> Response:
            b = self.behaviour
            if b.status >= 500:
                return JSONResponse({"error": {"message": "down"}}, status_code=b.status)
            return JSONResponse({"object": "list", "data": [
                {"id": m, "object": "model", "max_model_len": 4096} if isinstance(m, str) else m
                for m in b.models]})

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            body = await request.json()
            received = Received(body=body, headers=dict(request.headers), images=self._images(body))
            self.received.append(received)
            b = self.behaviour
            if b.status != 200:
                headers = {"Retry-After": b.retry_after} if b.retry_after else None
                return JSONResponse({"object": "error", "message": b.error_message, "type": "BadRequestError",
                                     "code": b.status}, status_code=b.status, headers=headers)
            if b.delay_s:
                end = time.monotonic() + b.delay_s
                while time.monotonic() < end:
                    if await request.is_disconnected():
                        self.disconnects += 1
                        return Response(status_code=499)
                    await asyncio.sleep(0.02)
            text = self.answer_for(received)
            usage = {"prompt_tokens": 11 + 5 * len(received.images), "completion_tokens": len(text.split()),
                     "total_tokens": 0}
            if body.get("stream"):
                return StreamingResponse(self._sse(text, usage, body), media_type="text/event-stream")
            self.completed += 1
            return JSONResponse({"id": "cmpl-1", "object": "chat.completion", "model": body["model"],
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                              "finish_reason": b.finish_reason}],
                                 "usage": usage})

        return app

    async def _sse(self, text: str, usage: dict[str, int], body: dict[str, Any]) -> Any:
        b = self.behaviour
        pieces = b.chunks if b.chunks is not None else [w if i == 0 else " " + w
                                                         for i, w in enumerate(text.split(" "))]

        def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
            chunk = {"id": "c", "object": "chat.completion.chunk", "model": body["model"],
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
            return f"data: {json.dumps(chunk)}\n\n"

        try:
            yield event({"role": "assistant", "content": ""})
            for piece in pieces:
                if b.chunk_pause_s:
                    await asyncio.sleep(b.chunk_pause_s)
                yield event({"content": piece})
            yield event({}, b.finish_reason)
            if (body.get("stream_options") or {}).get("include_usage"):
                yield f"data: {json.dumps({'id': 'c', 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"
            self.completed += 1
        except (asyncio.CancelledError, GeneratorExit):
            self.disconnects += 1
            raise

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> UpstreamDouble:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def reset(self) -> None:
        self.behaviour = Behaviour()
        self.received.clear()
        self.disconnects = 0
        self.completed = 0

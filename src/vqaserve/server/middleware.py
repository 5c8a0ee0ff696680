"""Pure-ASGI layers that wrap every request: request id + access log + last-resort 500, body limit.

Pure ASGI (not BaseHTTPMiddleware) so streamed answers pass through untouched and a client
disconnect reaches the route.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vqaserve.metrics import Metrics

access_log = logging.getLogger("vqaserve.access")
log = logging.getLogger("vqaserve.server")
# A client-chosen id is echoed into headers and logs: keep it to a safe alphabet and length.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def error_json(status: int, message: str, kind: str, param: str | None, code: str | None,
               headers: Mapping[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def _route_name(scope: Scope) -> str:
    """The route template (never the raw path: unbounded label values would blow up /metrics)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id", "")
        rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        seen: dict[str, Any] = {"status": 500, "cache": None, "started": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["started"] = True
                seen["status"] = message["status"]
                raw = list(message.get("headers", []))
                raw.append((b"x-request-id", rid.encode()))
                for k, v in raw:
                    if k.lower() == b"x-vqa-cache":
                        seen["cache"] = v.decode()
                message["headers"] = raw
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:  # noqa: BLE001 - the last line of defence: log it, answer generically
            log.exception("unhandled error in request %s", rid)
            self.metrics.engine_errors.labels(code="internal").inc()
            if not seen["started"]:
                response = error_json(500, f"internal server error (request id {rid}); the server log "
                                      "has details", "server_error", None, "internal_error")
                await response(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.dec()
            seconds = time.perf_counter() - started
            route = _route_name(scope)
            self.metrics.observe_request(route, scope["method"], seen["status"], seconds)
            access_log.info(json.dumps({
                "event": "access", "method": scope["method"], "path": scope["path"],
                "route": route, "status": seen["status"], "ms": round(seconds * 1000.0, 2),
                "request_id": rid, "cache": seen["cache"],
                "client": (scope.get("client") or ("-",))[0]}))


class BodyLimitMiddleware:
    """413 for bodies over `max_bytes`: refused on Content-Length at once, or counted while reading.

    The body is read here in full (up to the limit) and replayed to the app, so an over-long chunked
    body is stopped before any route or parser sees it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> JSONResponse:
        mib = self.max_bytes / (1024 * 1024)
        return error_json(413, f"request body is larger than the limit of {self.max_bytes} bytes "
                          f"({mib:.1f} MiB); send smaller images or raise VQA_MAX_BODY_BYTES",
                          "invalid_request_error", "body", "payload_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        for key, value in scope["headers"]:
            if key.lower() == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0:
                    await error_json(400, "invalid Content-Length header", "invalid_request_error",
                                     "Content-Length", "invalid_request")(scope, receive, send)
                    return
                if declared > self.max_bytes:
                    await self._too_large()(scope, receive, send)
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._too_large()(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        await self.app(scope, replay, send)

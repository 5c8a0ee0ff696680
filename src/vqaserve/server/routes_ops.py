"""Operations routes (`/health`, `/ready`, `/metrics`) and the pages (`/`, `/review`, `/static/...`)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response

from vqaserve.server.startup import RETRY_AFTER_S
from vqaserve.server.state import state
from vqaserve.server.static_files import SafeStaticFiles

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is alive and its event loop answers (while the model loads or is busy)."""
    return {"status": "ok"}


async def _call(check: Any) -> dict[str, Any]:
    try:
        result = check()
        if inspect.isawaitable(result):
            result = await result
    except Exception as exc:  # noqa: BLE001 - a failing health probe is itself the finding
        return {"ok": False, "degraded": True, "error": type(exc).__name__}
    return dict(result) if isinstance(result, dict) else {"ok": bool(result)}


def _degraded(state: dict[str, Any]) -> bool:
    return bool(state.get("degraded")) or state.get("status") == "degraded" or state.get("ok") is False


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """200 once the engine is loaded ("degraded" when e.g. Redis is down but answers still flow).

    503 before: `loading` with the phase and seconds so far, or `failed` with the reason. Open without
    an API key, like /health: it names the model and adapters and says how the parts fare, no more.
    """
    app = state(request)
    pipeline = app.pipeline
    if not app.startup.ready or pipeline is None:
        headers = {} if app.startup.failed else {"Retry-After": str(RETRY_AFTER_S)}
        return JSONResponse(app.startup.status(), status_code=503, headers=headers)
    engine_state = await _call(pipeline.engine.health)
    body: dict[str, Any] = {"model": pipeline.model_id, "adapters": pipeline.engine.adapters(),
                            "engine": engine_state}
    for name, probe in pipeline.c.health.items():  # each component's probe (wiring: the cache)
        body[name] = await _call(probe)
    if engine_state.get("ok") is False:
        return JSONResponse({"status": "unavailable", **body}, status_code=503)
    degraded = any(_degraded(body[name]) for name in pipeline.c.health)
    return JSONResponse({"status": "degraded" if degraded else "ready", **body})


# Prometheus text, not JSON: say so in the OpenAPI schema (the default would be application/json).
@router.get("/metrics", response_class=PlainTextResponse,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
async def metrics(request: Request) -> Response:
    m = state(request).metrics
    return Response(m.render(), media_type=m.content_type)


def mount_static(app: FastAPI, static_dir: Path) -> None:
    """The page at `/`, the review page at `/review`; their assets under `/static` (never anything
    outside that folder). The review page's HTML holds no data: what it shows comes from /v1/captures,
    which needs the API key like every /v1 route."""
    pages = {"/": static_dir / "index.html", "/review": static_dir / "review.html"}

    def serve(html: Path) -> Any:
        async def page() -> FileResponse:
            return FileResponse(html, media_type="text/html; charset=utf-8",
                                headers={"content-security-policy": CSP, "x-content-type-options": "nosniff"})
        return page

    for path, html in pages.items():
        app.add_api_route(path, serve(html), methods=["GET", "HEAD"], include_in_schema=False)

    app.mount("/static", SafeStaticFiles(directory=str(static_dir)), name="static")


# The page loads only its own files and talks only to this origin; inline scripts are not allowed,
# so even an injected tag could not run.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")

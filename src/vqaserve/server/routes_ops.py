"""Operations routes (`/health`, `/ready`, `/metrics`) and the web page (`/`, `/static/...`)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from vqaserve.server.static_files import SafeStaticFiles

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is alive and its event loop answers (even while the model is busy)."""
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
    """200 once the engine is loaded ("degraded" when e.g. Redis is down but answers still flow)."""
    pipeline = getattr(request.app.state, "pipeline", None)
    if pipeline is None or not request.app.state.ready:
        return JSONResponse({"status": "loading"}, status_code=503)
    engine_state = await _call(pipeline.engine.health)
    body: dict[str, Any] = {"model": pipeline.model_id, "adapters": pipeline.engine.adapters(),
                            "engine": engine_state}
    # Other components register probes here: a callable (reported as "cache"), or {name: callable}.
    probes = pipeline.c.extra.get("health")
    if callable(probes):
        probes = {"cache": probes}
    for name, probe in (probes or {}).items():
        body[name] = await _call(probe)
    if engine_state.get("ok") is False:
        return JSONResponse({"status": "unavailable", **body}, status_code=503)
    degraded = any(_degraded(body[name]) for name in (probes or {}))
    return JSONResponse({"status": "degraded" if degraded else "ready", **body})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    m = request.app.state.metrics
    return Response(m.render(), media_type=m.content_type)


def mount_static(app: FastAPI, static_dir: Path) -> None:
    """The page at `/`; its assets under `/static` (never anything outside that folder)."""
    index = static_dir / "index.html"

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(index, media_type="text/html; charset=utf-8",
                            headers={"content-security-policy": CSP, "x-content-type-options": "nosniff"})

    app.mount("/static", SafeStaticFiles(directory=str(static_dir)), name="static")


# The page loads only its own files and talks only to this origin; inline scripts are not allowed,
# so even an injected tag could not run.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")

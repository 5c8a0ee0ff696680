"""`create_app(settings, engine=None)`: the FastAPI app around one Pipeline.

The engine loads once, in a task the lifespan starts (server/startup.py): the port opens at once,
`/ready` reports the load's progress and `/v1/...` answers 503 until it is done. Every error leaves
as OpenAI error JSON from the handlers below: VQAError with its own status, validation problems as
400 naming the field, anything else as a generic 500 from the access middleware (details go to the
server log, never to the client).

Hooks for later layers: pass `middleware=[Middleware(...)]` (they run inside the request-id/access-log
and body-limit layers, so their refusals are logged and carry a request id). The app's state (settings,
metrics, start-up, drain, pipeline, capture writer) is one `AppState` (server/state.py), read with `app_state(app)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware

from vqaserve.cache.redis_link import RedisLink
from vqaserve.engines.base import Engine
from vqaserve.errors import BlockedInput, EngineFailure, VQAError
from vqaserve.metrics import Metrics
from vqaserve.server.capture_hook import open_capture
from vqaserve.server.middleware import AccessLogMiddleware, BodyLimitMiddleware, error_json
from vqaserve.server.openapi import finish_document
from vqaserve.server.operations import ops_middleware, ops_middleware_after_body
from vqaserve.server.shutdown import Drain
from vqaserve.server.startup import LoadingGate, Startup, load
from vqaserve.server.state import AppState, install
from vqaserve.server.validation import invalid_request
from vqaserve.settings import Settings

if TYPE_CHECKING:
    from vqaserve.pipeline import Pipeline

log = logging.getLogger("vqaserve.server")
STATIC_DIR = Path(__file__).parent / "static"

# HTTP statuses Starlette raises itself (unknown path, wrong method) -> OpenAI error types.
_HTTP_TYPES = {404: ("not_found_error", "not_found"), 405: ("invalid_request_error", "method_not_allowed")}


def create_app(settings: Settings, engine: Engine | None = None,
               middleware: Sequence[Middleware] = ()) -> FastAPI:
    held = AppState(settings=settings, metrics=Metrics(), drain=Drain(settings.server.shutdown_grace_s),
                    startup=Startup(engine.name if engine is not None else settings.llm.engine,
                                    _public_model(settings)))
    # One Redis connection for the process (cache L2 and shared rate limits), closed at shutdown.
    redis = RedisLink.from_settings(settings.cache)
    # One capture writer for the process (VQA_CAPTURE_URL): started with the app, closed after the
    # last answer, so what is queued at shutdown is written.
    held.capture = open_capture(settings, held.metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from vqaserve.wiring import build_engine, build_pipeline

        built: list[Engine] = []

        async def start_engine() -> None:
            built.append(engine or build_engine(settings))
            await built[0].start()

        def build() -> None:
            # the batcher and every breaker report to metrics; the cache shares the Redis link
            held.pipeline = build_pipeline(settings, built[0], metrics=held.metrics, redis=redis)
            log.info("engine %s ready: model %s", built[0].name, held.pipeline.model_id)

        if held.capture is not None:
            await held.capture.start()
        # The port opens when this function yields, so the load runs as a task (server/startup.py).
        task = asyncio.create_task(load(held.startup, start_engine, build), name="vqa-startup")
        # One turn of the loop: a load that never waits (scripted engine, an engine already loaded)
        # is then complete before the first request; anything that waits goes on in the background.
        await asyncio.sleep(0)
        try:
            yield
        finally:
            if not task.done():
                # An engine loading in a worker thread cannot be interrupted: close() below waits.
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await _close(held.pipeline, built[0] if built else None)
            if held.capture is not None:
                await held.capture.close(timeout_s=5.0)
            if redis is not None:
                await redis.aclose()
            held.metrics.close()

    # /docs and /redoc would load Swagger/ReDoc from a CDN: off (offline sites); /openapi.json stays.
    app = FastAPI(title="vqaserve", summary="Visual question answering, OpenAI-compatible",
                  docs_url=None, redoc_url=None, lifespan=lifespan, middleware=[
                      Middleware(AccessLogMiddleware, metrics=held.metrics),
                      # Refusals that cost nothing come before the body is read (ops layers).
                      *ops_middleware(settings, held.drain),
                      # After the key check (a stranger learns nothing), before the body is read.
                      Middleware(LoadingGate, startup=held.startup),
                      Middleware(BodyLimitMiddleware,
                                 max_bytes=settings.images.max_body_bytes),
                      *ops_middleware_after_body(settings, redis),
                      *middleware,
                  ])
    install(app, held)
    _install_error_handlers(app, held.metrics)

    from vqaserve.server import routes_admin, routes_capture, routes_openai, routes_ops, routes_vqa

    app.include_router(routes_openai.router)
    app.include_router(routes_vqa.router)
    app.include_router(routes_capture.router)
    app.include_router(routes_ops.router)
    app.include_router(routes_admin.router)
    routes_ops.mount_static(app, STATIC_DIR)
    finish_document(app, settings.generation)
    return app


async def _close(pipeline: Pipeline | None, engine: Engine | None) -> None:
    if pipeline is not None:
        for close in pipeline.c.closers:
            try:
                await close()
            except Exception:  # noqa: BLE001 - one failing hook must not skip the others
                log.exception("shutdown hook failed")
    if engine is not None:
        await engine.close()
    if pipeline is not None:
        pipeline.image_pool.shutdown(wait=False, cancel_futures=True)


def _public_model(settings: Settings) -> str:
    """The model /ready names while loading: a local directory by its last part, never its path."""
    llm = settings.llm
    name = (llm.upstream_model or "(asked from the model server)") if llm.engine == "upstream" else llm.model
    return Path(name).name if name.startswith(("/", "~", ".")) else name


def _install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    async def vqa_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, VQAError)
        if isinstance(exc, BlockedInput):
            metrics.safety_blocks.labels(stage="input").inc()
        if isinstance(exc, EngineFailure) or exc.status >= 500:
            metrics.engine_errors.labels(code=str(exc.code)).inc()
        return vqa_error_response(exc)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        # A request body refused by its model (FastAPI validates it): a 400 naming the field.
        assert isinstance(exc, RequestValidationError)
        return vqa_error_response(invalid_request(exc.errors(), strip=_without_body))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kind, code = _HTTP_TYPES.get(exc.status_code, ("invalid_request_error", "invalid_request"))
        message = {404: f"no route {request.url.path}; the API is /v1/chat/completions, /v1/vqa, "
                        "/v1/models, /v1/feedback, /v1/captures, /health, /ready, /metrics and the pages "
                        "at / and /review",
                   405: f"method {request.method} is not allowed on {request.url.path}"}.get(
                       exc.status_code, str(exc.detail))
        headers = exc.headers
        if exc.status_code == 405:  # Starlette names the first route's methods only; a path may have several
            headers = {**(headers or {}), "Allow": ", ".join(_methods_for(request, (headers or {}).get("Allow")))}
        return error_json(exc.status_code, message, kind, None, code, headers=headers)

    app.add_exception_handler(VQAError, vqa_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)


def _without_body(loc: Sequence[str | int]) -> Sequence[str | int]:
    """FastAPI's locations start with where the value came from ("body", "query")."""
    return loc[1:] if loc and loc[0] in ("body", "query", "form", "path") else loc


_HTTP_METHODS = frozenset({"get", "head", "post", "put", "patch", "delete", "options"})


def _methods_for(request: Request, starlettes: str | None) -> list[str]:
    """Every method this request's path accepts (what a 405's Allow header must list): the API document's
    operations on the paths it matches, with what Starlette found (routes left out of the document)."""
    import re

    methods = {m.strip() for m in (starlettes or "").split(",") if m.strip()}
    for template, operations in request.app.openapi().get("paths", {}).items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, request.url.path):
            methods |= {m.upper() for m in operations if m in _HTTP_METHODS}
    return sorted(methods)


def vqa_error_response(exc: VQAError) -> JSONResponse:
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    status = exc.status if exc.status >= 400 else 400
    return JSONResponse(exc.to_openai(), status_code=status, headers=headers)

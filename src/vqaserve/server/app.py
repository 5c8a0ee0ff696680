"""`create_app(settings, engine=None)`: the FastAPI app around one Pipeline.

The engine loads once in the lifespan. Every error leaves as OpenAI error JSON from the handlers
below: VQAError with its own status, validation problems as 400 naming the field, anything else
as a generic 500 from the access middleware (details go to the server log, never to the client).

Hooks for later layers (API keys, rate limits, graceful shutdown): pass `middleware=[Middleware(...)]`
(they run inside the request-id/access-log and body-limit layers, so their refusals are logged and
carry a request id); the pipeline is `app.state.pipeline`, settings `app.state.settings`, metrics
`app.state.metrics`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware

from vqaserve.engines.base import Engine
from vqaserve.errors import BlockedInput, EngineFailure, VQAError
from vqaserve.metrics import Metrics
from vqaserve.server.middleware import AccessLogMiddleware, BodyLimitMiddleware, error_json
from vqaserve.server.operations import ops_middleware, ops_middleware_after_body
from vqaserve.server.shutdown import Drain
from vqaserve.settings import Settings

log = logging.getLogger("vqaserve.server")
STATIC_DIR = Path(__file__).parent / "static"

# HTTP statuses Starlette raises itself (unknown path, wrong method) -> OpenAI error types.
_HTTP_TYPES = {404: ("not_found_error", "not_found"), 405: ("invalid_request_error", "method_not_allowed")}


def create_app(settings: Settings, engine: Engine | None = None,
               middleware: Sequence[Middleware] = ()) -> FastAPI:
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from vqaserve.wiring import build_engine, build_pipeline

        try:
            eng = engine or build_engine(settings)
            await eng.start()
        except VQAError as exc:
            app.state.startup_error = exc  # `vqa serve` reports it as one line after uvicorn exits
            raise
        pipeline = build_pipeline(settings, eng, metrics=metrics)
        batcher = pipeline.c.batcher
        if batcher is not None and getattr(batcher, "observer", False) is None:
            batcher.observer = metrics.observe_batch  # type: ignore[attr-defined]
        app.state.pipeline = pipeline
        app.state.ready = True
        log.info("engine %s ready: model %s", eng.name, pipeline.model_id)
        try:
            yield
        finally:
            app.state.ready = False
            # Components register async close hooks (e.g. the Redis pool) in extra["aclose"].
            for close in pipeline.c.extra.get("aclose", []):
                try:
                    await close()
                except Exception:  # noqa: BLE001 - one failing hook must not skip the others
                    log.exception("shutdown hook failed")
            await eng.close()
            pipeline.image_pool.shutdown(wait=False, cancel_futures=True)

    drain = Drain(settings.server.shutdown_grace_s)
    # /docs and /redoc would load Swagger/ReDoc from a CDN: off (offline sites); /openapi.json stays.
    app = FastAPI(title="vqaserve", summary="Visual question answering, OpenAI-compatible",
                  docs_url=None, redoc_url=None, lifespan=lifespan, middleware=[
                      Middleware(AccessLogMiddleware, metrics=metrics),
                      # Refusals that cost nothing come before the body is read (ops layers).
                      *ops_middleware(settings, drain),
                      Middleware(BodyLimitMiddleware,
                                 max_bytes=settings.images.max_body_bytes),
                      *ops_middleware_after_body(settings),
                      *middleware,
                  ])
    app.state.drain = drain  # the server's graceful shutdown waits on it (server/shutdown.py)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.ready = False
    app.state.startup_error = None
    _install_error_handlers(app, metrics)

    from vqaserve.server import routes_openai, routes_ops, routes_vqa

    app.include_router(routes_openai.router)
    app.include_router(routes_vqa.router)
    app.include_router(routes_ops.router)
    routes_ops.mount_static(app, STATIC_DIR)
    return app


def _install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    async def vqa_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, VQAError)
        if isinstance(exc, BlockedInput):
            metrics.safety_blocks.labels(stage="input").inc()
        if isinstance(exc, EngineFailure) or exc.status >= 500:
            metrics.engine_errors.labels(code=str(exc.code)).inc()
        return vqa_error_response(exc)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x not in ("body", "query", "form")]
        param = ".".join(loc) or "body"
        return error_json(400, f"{param}: {first.get('msg', 'invalid value')}", "invalid_request_error",
                          param, "invalid_request")

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kind, code = _HTTP_TYPES.get(exc.status_code, ("invalid_request_error", "invalid_request"))
        message = {404: f"no route {request.url.path}; the API is /v1/chat/completions, /v1/vqa, "
                        "/v1/models, /health, /ready, /metrics and the page at /",
                   405: f"method {request.method} is not allowed on {request.url.path}"}.get(
                       exc.status_code, str(exc.detail))
        return error_json(exc.status_code, message, kind, None, code, headers=exc.headers)

    app.add_exception_handler(VQAError, vqa_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)


def vqa_error_response(exc: VQAError) -> JSONResponse:
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    status = exc.status if exc.status >= 400 else 400
    return JSONResponse(exc.to_openai(), status_code=status, headers=headers)


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` (several workers): settings from VQA_* variables."""
    from vqaserve.cli.serve import configure_logging
    from vqaserve.server.limits import timed_protocol
    from vqaserve.settings import load_settings

    settings = load_settings()
    # A worker process starts with bare logging (no access log): set it up as `vqa serve` did in the
    # parent, at the --log-level uvicorn has already applied to its own loggers here.
    level = logging.getLevelName(logging.getLogger("uvicorn.error").getEffectiveLevel())
    configure_logging(str(level).lower(), settings.server.log_json)
    timed_protocol(settings.server.header_timeout_s, settings.server.body_timeout_s)  # this worker's
    return create_app(settings)

"""`create_app(settings, engine=None)`: the FastAPI app around one Pipeline.

The engine loads once, in a task the lifespan starts (server/startup.py): the port opens at once,
`/ready` reports the load's progress and `/v1/...` answers 503 until it is done. Every error leaves
as OpenAI error JSON from the handlers below: VQAError with its own status, validation problems as
400 naming the field, anything else as a generic 500 from the access middleware (details go to the
server log, never to the client).

Hooks for later layers (API keys, rate limits, graceful shutdown): pass `middleware=[Middleware(...)]`
(they run inside the request-id/access-log and body-limit layers, so their refusals are logged and
carry a request id); the pipeline is `app.state.pipeline`, settings `app.state.settings`, metrics
`app.state.metrics`.
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
from vqaserve.server.middleware import AccessLogMiddleware, BodyLimitMiddleware, error_json
from vqaserve.server.operations import ops_middleware, ops_middleware_after_body
from vqaserve.server.shutdown import Drain
from vqaserve.server.startup import LoadingGate, Startup, load
from vqaserve.settings import Settings

if TYPE_CHECKING:
    from vqaserve.pipeline import Pipeline

log = logging.getLogger("vqaserve.server")
STATIC_DIR = Path(__file__).parent / "static"

# HTTP statuses Starlette raises itself (unknown path, wrong method) -> OpenAI error types.
_HTTP_TYPES = {404: ("not_found_error", "not_found"), 405: ("invalid_request_error", "method_not_allowed")}


def create_app(settings: Settings, engine: Engine | None = None,
               middleware: Sequence[Middleware] = ()) -> FastAPI:
    metrics = Metrics()
    # One Redis connection for the process (cache L2 and shared rate limits), closed at shutdown.
    redis = RedisLink.from_settings(settings.cache)
    startup = Startup(engine.name if engine is not None else settings.llm.engine, _public_model(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from vqaserve.wiring import build_engine, build_pipeline

        built: list[Engine] = []

        async def start_engine() -> None:
            built.append(engine or build_engine(settings))
            await built[0].start()

        def build() -> None:
            pipeline = build_pipeline(settings, built[0], metrics=metrics, redis=redis)  # batcher reports to metrics
            app.state.pipeline = pipeline
            log.info("engine %s ready: model %s", built[0].name, pipeline.model_id)

        # The port opens when this function yields, so the load runs as a task (server/startup.py).
        task = asyncio.create_task(load(startup, start_engine, build), name="vqa-startup")
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
            await _close(app.state.pipeline, built[0] if built else None)
            if redis is not None:
                await redis.aclose()
            metrics.close()

    drain = Drain(settings.server.shutdown_grace_s)
    # /docs and /redoc would load Swagger/ReDoc from a CDN: off (offline sites); /openapi.json stays.
    app = FastAPI(title="vqaserve", summary="Visual question answering, OpenAI-compatible",
                  docs_url=None, redoc_url=None, lifespan=lifespan, middleware=[
                      Middleware(AccessLogMiddleware, metrics=metrics),
                      # Refusals that cost nothing come before the body is read (ops layers).
                      *ops_middleware(settings, drain),
                      # After the key check (a stranger learns nothing), before the body is read.
                      Middleware(LoadingGate, startup=startup),
                      Middleware(BodyLimitMiddleware,
                                 max_bytes=settings.images.max_body_bytes),
                      *ops_middleware_after_body(settings, redis),
                      *middleware,
                  ])
    app.state.drain = drain  # the server's graceful shutdown waits on it (server/shutdown.py)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.startup = startup  # /ready, `vqa serve` (exits on a failed load) and tests read it
    app.state.pipeline = None  # set by the start-up task once the engine is loaded
    _install_error_handlers(app, metrics)

    from vqaserve.server import routes_admin, routes_openai, routes_ops, routes_vqa

    app.include_router(routes_openai.router)
    app.include_router(routes_vqa.router)
    app.include_router(routes_ops.router)
    app.include_router(routes_admin.router)
    routes_ops.mount_static(app, STATIC_DIR)
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

"""The admin API: adapters loaded, reloaded and unloaded, and canary routes set, on the running service.

    GET    /admin/adapters          the adapters served (name, version, requests in flight) and the routes
    POST   /admin/adapters          {"name": "v2", "path": "/adapters/v2"}: load, or reload with new weights
    DELETE /admin/adapters/{name}   stop serving an adapter (requests in flight finish on it)
    PUT    /admin/routes/{model}    {"to": {"v2": 10}}: 10 % of the requests for `model` answered by v2
    DELETE /admin/routes/{model}    every request for `model` answered by it again

Every route needs an admin key (server/admin_access.py); `vqa adapter load|unload|route|list` is the
command line over them. Changes live in this process: a restart serves VQA_ADAPTERS again, with no
routes (name an adapter there to keep it across restarts).
"""

from __future__ import annotations

import logging
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vqaserve.engines.adapters import AdapterVersion
from vqaserve.errors import InvalidRequest, NotFound
from vqaserve.pipeline import Pipeline
from vqaserve.server.admin_access import require_admin
from vqaserve.server.responses import ErrorResponse
from vqaserve.server.route_support import answering_pipeline, check_json_body

log = logging.getLogger("vqaserve.admin")
_ERRORS = {400: "a malformed body or a bad field (`param` names it), or a change that cannot be made",
           401: "missing or wrong admin key", 403: "the admin API is off (no VQA_ADMIN_KEYS), or an API key was "
           "sent instead of an admin key", 404: "no such adapter, model or route",
           503: "the model is still loading, or the model server failed"}
router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                   responses={code: {"model": ErrorResponse, "description": text} for code, text in _ERRORS.items()})


# --- bodies and answers ----------------------------------------------------------------------------
class LoadAdapter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="the public name clients send as `model`", examples=["v2"])
    path: str = Field(description="the adapter directory (`vqa train --lora`'s output) as the server reads it; "
                                  "through vLLM, as the vLLM server reads it", examples=["/srv/adapters/v2"])


class SetRoute(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: dict[str, float] = Field(description="target model -> percent of the requests it answers",
                                 examples=[{"v2": 10}])


class AdapterState(BaseModel):
    name: str
    version: str = Field(description="NAME@FINGERPRINT of the weights (the x-vqa-model header, metrics)")
    state: Literal["serving", "retiring"] = Field(description="retiring: replaced or unloaded, still "
                                                              "answering requests admitted before")
    in_flight: int = Field(description="requests admitted on this version and not yet answered")
    path: str | None = Field(description="the path it was loaded from through this API (null: at start-up)")

    @classmethod
    def of(cls, version: AdapterVersion, state: Literal["serving", "retiring"], in_flight: int) -> AdapterState:
        return cls(name=version.name, version=version.key, state=state, in_flight=in_flight,
                   path=version.requested or None)


class RouteState(BaseModel):
    model: str
    to: dict[str, float]


class AdminState(BaseModel):
    model: str = Field(description="the base model")
    adapters: list[AdapterState]
    routes: list[RouteState]


class LoadResult(BaseModel):
    name: str
    version: str
    status: Literal["loaded", "reloaded", "unchanged"]
    replaced: str | None = Field(description="the version it replaced (it answers the requests in flight)")


class Changed(BaseModel):
    name: str
    version: str | None = None
    status: Literal["unloaded", "removed"]


def _body(model: type[BaseModel]) -> dict[str, Any]:
    """The request body for /openapi.json (the body is read and checked by `_parse`, for its messages)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


_HINTS = {"name": 'give the adapter\'s public name as text, e.g. "v2"',
          "path": "give the adapter directory as text, as the server (through vLLM: the vLLM server) reads it",
          "to": 'give {"MODEL": PERCENT}, e.g. {"v2": 10}'}
Body = TypeVar("Body", bound=BaseModel)


def _parse(model: type[Body], data: object) -> Body:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = [str(x) for x in error.get("loc", ())]
        fields = list(model.model_fields)
        if error.get("type") == "extra_forbidden":
            message = f"unknown field {loc[-1]!r}; the body takes {', '.join(fields)}"
        elif not loc:
            message = f"the body must be a JSON object with {', '.join(fields)}"
        else:
            message = f"{'.'.join(loc)}: {error.get('msg', 'invalid').lower()}; {_HINTS.get(loc[0], '')}"
        raise InvalidRequest(message.rstrip("; "), param=".".join(loc) or "body") from None


async def _json(request: Request) -> object:
    """The body as the client API reads JSON (the same refusals in the same words)."""
    await check_json_body(request)
    return await request.json()


def _who(request: Request) -> str:
    return str(getattr(request.state, "admin_key_id", "?"))


# --- routes ------------------------------------------------------------------------------------------
@router.get("/adapters", response_model=AdminState, summary="Adapters served and canary routes (admin)")
async def list_adapters(request: Request) -> AdminState:
    pipeline = answering_pipeline(request)
    table = pipeline.engine.adapter_table
    serving = [v for v in (table.current(n) for n in table.names()) if v is not None]
    adapters = [AdapterState.of(v, "serving", table.in_flight(v.key)) for v in serving]
    adapters += [AdapterState.of(v, "retiring", table.in_flight(v.key)) for v in table.retiring()]
    routes = [RouteState(model=r.model, to=dict(r.shares)) for r in pipeline.routes.routes()]
    return AdminState(model=pipeline.model_id, adapters=adapters, routes=routes)


@router.post("/adapters", response_model=LoadResult, openapi_extra=_body(LoadAdapter),
             summary="Load an adapter, or reload it with new weights (admin)")
async def load_adapter(request: Request) -> LoadResult:
    body = _parse(LoadAdapter, await _json(request))
    loaded = await answering_pipeline(request).engine.load_adapter(body.name, body.path)
    replaced = loaded.replaced.key if loaded.status == "reloaded" and loaded.replaced else None
    log.info("admin %s: adapter %s %s as %s (was %s)", _who(request), body.name, loaded.status,
             loaded.version.key, replaced)
    return LoadResult(name=body.name, version=loaded.version.key, status=loaded.status, replaced=replaced)


@router.delete("/adapters/{name}", response_model=Changed, summary="Stop serving an adapter (admin)")
async def unload_adapter(name: str, request: Request) -> Changed:
    pipeline = answering_pipeline(request)
    routed = pipeline.routes.targets()
    if name in routed:
        raise InvalidRequest(f"adapter {name!r} answers a share of the requests for {routed[name]!r}; remove "
                             f"that route first (vqa adapter route {routed[name]} --off)", param="name")
    version = await pipeline.engine.unload_adapter(name)
    pipeline.routes.remove(name)  # requests for it are 404 now: a route from it has nothing to split
    log.info("admin %s: adapter %s unloaded (version %s)", _who(request), name, version.key)
    return Changed(name=name, version=version.key, status="unloaded")


@router.put("/routes/{model}", response_model=RouteState, openapi_extra=_body(SetRoute),
            summary="Send a share of the requests for a model to another (admin)")
async def set_route(model: str, request: Request) -> RouteState:
    body = _parse(SetRoute, await _json(request))
    pipeline = answering_pipeline(request)
    _served(pipeline, model, "model")
    for target in body.to:
        _served(pipeline, target, f"to.{target}")
    route = pipeline.routes.set(model, body.to)
    log.info("admin %s: route %s -> %s", _who(request), model, dict(route.shares))
    return RouteState(model=route.model, to=dict(route.shares))


@router.delete("/routes/{model}", response_model=Changed, summary="Remove a model's route (admin)")
async def remove_route(model: str, request: Request) -> Changed:
    if answering_pipeline(request).routes.remove(model) is None:
        raise NotFound(f"no route for {model!r}; GET /admin/adapters lists the routes", param="model",
                       code="route_not_found")
    log.info("admin %s: route %s removed", _who(request), model)
    return Changed(name=model, status="removed")


def _served(pipeline: Pipeline, model: str, param: str) -> None:
    if model != pipeline.model_id and model not in pipeline.engine.adapters():
        raise NotFound(f"{param}: model {model!r} is not served; load it first (vqa adapter load NAME PATH) or "
                       "pick one of GET /v1/models", param=param)

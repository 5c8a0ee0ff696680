"""The app's state: one typed object, stored once on the app, read through one accessor.

Routes call `state(request)`, everything else that holds the app (middleware given `scope["app"]`,
`vqa serve`, tests) calls `app_state(app)`; nothing else reads `app.state`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request

from vqaserve.metrics import Metrics
from vqaserve.server.shutdown import Drain
from vqaserve.server.startup import Startup
from vqaserve.settings import Settings

if TYPE_CHECKING:
    from vqaserve.capture import CaptureWriter
    from vqaserve.pipeline import Pipeline

@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    startup: Startup  # /ready, the loading gate and `vqa serve` (which exits on a failed load) read it
    drain: Drain  # the server's graceful shutdown waits on it (server/shutdown.py)
    pipeline: Pipeline | None = None  # set by the start-up task once the engine is loaded
    capture: CaptureWriter | None = None  # VQA_CAPTURE_URL set: this process's writer (server/capture_hook.py)


def install(app: Starlette, held: AppState) -> None:
    app.state.vqa = held  # the one attribute of Starlette's app.state that this app uses


def app_state(app: Starlette) -> AppState:
    found = app.state.vqa
    assert isinstance(found, AppState), "not an app made by create_app"
    return found


def state(request: Request) -> AppState:
    return app_state(request.app)

"""Loading the engine behind an open port: `/health` answers at once, `/ready` reports progress.

uvicorn opens its socket only after the lifespan's start-up has returned. Loading a real 8B model
there left load balancers with "connection refused" for minutes and no way to tell a slow load from
a dead host. So the lifespan starts `load()` as a task and returns; while it runs:

- `/ready` answers 503 `{"status": "loading", "phase", "step", "steps", "elapsed_s", ...}`;
- `LoadingGate` answers every `/v1/...` request 503 `model_loading` with `Retry-After`;
- a failed load is logged and `/ready` keeps answering 503 `{"status": "failed", "reason"}`
  (`vqa serve` then exits with the error as one line: see cli/serve.py).

`VQA_TEST_LOAD_DELAY_S` (test-only, read here and nowhere else) stretches the engine phase so tests
can watch a slow load without a multi-gigabyte model.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from vqaserve.errors import EngineFailure, VQAError
from vqaserve.server.middleware import error_json

log = logging.getLogger("vqaserve.server")
TEST_DELAY_ENV = "VQA_TEST_LOAD_DELAY_S"
RETRY_AFTER_S = 5  # a load takes seconds to minutes: poll again soon, not in a tight loop
PHASES = ("loading the model", "building the pipeline")  # what `load()` walks through, in order
# Absolute paths (a model directory, an adapter file) stay in the server log, never in /ready.
_ABS_PATH = re.compile(r"(?<![\w.:])(?:~|/)[^\s'\"]*")


class Startup:
    """Where the start-up stands. Read by /ready and LoadingGate; `done` lets threads wait on it."""

    def __init__(self, engine_name: str, model: str) -> None:
        self.engine_name, self.model = engine_name, model
        self.phase = "waiting for the server to start"
        self.step = 0
        self.started_at: float | None = None
        self.error: VQAError | None = None  # what `vqa serve` prints (operator's terminal: full text)
        self.reason: str | None = None      # what /ready says (a client: no paths, no traceback)
        self.on_failed: Callable[[], None] | None = None  # `vqa serve` stops the server here
        self.done = threading.Event()  # set when ready or failed; a thread may wait on it

    @property
    def ready(self) -> bool:
        return self.done.is_set() and self.error is None

    @property
    def failed(self) -> bool:
        return self.error is not None

    def elapsed(self) -> float:
        return 0.0 if self.started_at is None else time.monotonic() - self.started_at

    def status(self) -> dict[str, Any]:
        """/ready's body until the pipeline is ready."""
        body: dict[str, Any] = {"status": "failed" if self.failed else "loading", "engine": self.engine_name,
                                "model": self.model, "phase": self.phase, "step": self.step,
                                "steps": len(PHASES), "elapsed_s": round(self.elapsed(), 1)}
        if self.reason is not None:
            body["reason"] = self.reason
        return body

    def enter(self, phase: str) -> None:
        if self.started_at is None:
            self.started_at = time.monotonic()
        self.phase = phase
        self.step = PHASES.index(phase) + 1
        log.info("start-up %d/%d: %s (%.1f s)", self.step, len(PHASES), phase, self.elapsed())

    def finish(self) -> None:
        self.phase = "ready"
        self.done.set()
        log.info("start-up done in %.1f s", self.elapsed())

    def fail(self, exc: BaseException) -> None:
        if isinstance(exc, VQAError):
            # A known failure (model missing, does not fit): its message names the fix; no traceback.
            log.error("start-up failed while %s: %s", self.phase, exc.message)
            self.error = exc
            self.reason = _ABS_PATH.sub("<path>", exc.message)
        else:
            log.error("start-up failed while %s", self.phase, exc_info=exc)  # the traceback: log only
            self.reason = (f"the engine failed while {self.phase} ({type(exc).__name__}); the server "
                           "log has the details")
            self.error = EngineFailure(self.reason)
        self.done.set()
        if self.on_failed is not None:
            self.on_failed()


async def load(startup: Startup, start_engine: Callable[[], Awaitable[None]],
               build: Callable[[], None]) -> None:
    """The lifespan's background task: start the engine, then build the pipeline around it."""
    try:
        startup.enter(PHASES[0])
        delay = load_delay_for_tests()
        if delay:
            log.warning("%s=%s: start-up stretched by %.1f s (tests only)", TEST_DELAY_ENV, delay, delay)
            await asyncio.sleep(delay)
        await start_engine()
        startup.enter(PHASES[1])
        build()
    except asyncio.CancelledError:  # the server stopped during the load
        raise
    except Exception as exc:  # noqa: BLE001 - every failure is reported by /ready, not raised into uvicorn
        startup.fail(exc)
        return
    startup.finish()


def load_delay_for_tests() -> float:
    """Seconds from VQA_TEST_LOAD_DELAY_S (0 when unset); VQA_TEST_* is exempt from the settings check."""
    raw = os.environ.get(TEST_DELAY_ENV, "").strip()
    try:
        return max(0.0, float(raw)) if raw else 0.0
    except ValueError:
        log.warning("%s=%r is not a number of seconds: ignored", TEST_DELAY_ENV, raw)
        return 0.0


class LoadingGate:
    """Refuses the answering routes (`/v1/...`) until the pipeline is ready, before any body is read."""

    def __init__(self, app: ASGIApp, startup: Startup) -> None:
        self.app = app
        self.startup = startup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        s = self.startup
        if scope["type"] != "http" or s.ready or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        if s.failed:
            # Retrying this instance cannot help: no Retry-After; a balancer should go elsewhere.
            response = error_json(503, "the model failed to load, so this instance cannot answer; "
                                  "use another instance (GET /ready says why)", "server_error", None,
                                  "model_load_failed")
        else:
            response = error_json(
                503, f"the model is still loading ({s.phase}, {s.elapsed():.0f} s so far); retry in "
                f"{RETRY_AFTER_S} s (GET /ready reports progress)", "server_error", None, "model_loading",
                headers={"Retry-After": str(RETRY_AFTER_S)})
        await response(scope, receive, send)

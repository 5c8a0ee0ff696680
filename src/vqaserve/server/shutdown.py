"""Graceful shutdown: on SIGTERM/SIGINT drain, then stop, then exit 0.

uvicorn alone closes its listening socket at the signal (clients see "connection refused", load
balancers learn nothing), waits for open connections without a deadline unless told one, and then
re-raises the signal, so the process dies with 143/130 instead of 0. Here the order is:

1. signal -> `Drain.start()`: new requests get 503 `shutting_down` + Retry-After + Connection: close,
   `/ready` answers 503 (so a balancer takes the instance out), `/health` stays 200;
2. requests (and streams) already running finish, up to `VQA_SHUTDOWN_GRACE_S` in total;
3. uvicorn's own shutdown (close sockets, cancel what is left, lifespan shutdown: engine closed);
4. exit 0. A second SIGINT forces the exit at once, as in uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Generator
from types import FrameType

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from vqaserve.server.middleware import error_json

log = logging.getLogger("vqaserve.server")
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Drain:
    """Shared between the app (which counts requests) and the server (which waits for them)."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.draining = False
        self.started_at: float | None = None
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self) -> None:
        if not self.draining:
            self.draining = True
            self.started_at = time.monotonic()

    def remaining(self) -> float:
        if self.started_at is None:
            return self.grace_s
        return max(0.0, self.grace_s - (time.monotonic() - self.started_at))

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight <= 0:
            self.in_flight = 0
            self._idle.set()

    async def wait_idle(self) -> bool:
        """True when every request finished inside the grace period."""
        try:
            await asyncio.wait_for(self._idle.wait(), self.remaining())
        except TimeoutError:
            return False
        return True


class DrainMiddleware:
    """Counts requests in flight; while draining, refuses new ones and reports not-ready."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.drain.draining and scope["path"] != "/health":
            retry = str(max(1, round(self.drain.remaining())))
            headers = {"Retry-After": retry, "Connection": "close"}
            if scope["path"] == "/ready":
                from fastapi.responses import JSONResponse

                await JSONResponse({"status": "shutting_down"}, status_code=503,
                                   headers=headers)(scope, receive, send)
                return
            await error_json(503, "the server is shutting down; retry on another instance or in a "
                             f"few seconds (Retry-After: {retry})", "server_error", None,
                             "shutting_down", headers=headers)(scope, receive, send)
            return
        self.drain.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.leave()


class GracefulServer(uvicorn.Server):
    """uvicorn.Server that drains before stopping and does not re-raise the signal (exit code 0)."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain
        self._drain_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        with self.capture_signals():
            await self._serve(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # As uvicorn's, minus re-raising the captured signal afterwards: a drained stop exits 0.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain.draining or self._loop is None or not self.started:
            if sig == signal.SIGINT and self.drain.draining:
                log.warning("second interrupt: stopping without waiting for requests")
                self.force_exit = True
            self.should_exit = True
            return
        log.info("signal %s: draining (%d request(s) in flight, grace %.0f s)",
                 signal.Signals(sig).name, self.drain.in_flight, self.drain.grace_s)
        self.drain.start()
        self._loop.call_soon_threadsafe(self._start_drain_task)

    def _start_drain_task(self) -> None:
        self._drain_task = asyncio.ensure_future(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        finished = await self.drain.wait_idle()
        if not finished:
            log.error("grace period over with %d request(s) still running: cancelling them",
                      self.drain.in_flight)
        # uvicorn waits for connections/tasks too: bound that wait by what is left of the grace.
        self.config.timeout_graceful_shutdown = max(1, round(self.drain.remaining()))
        self.should_exit = True

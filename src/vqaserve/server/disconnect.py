"""Stop work for clients that hang up: cancel the route when the connection drops mid-request.

Starlette cancels a *streaming* response when the client leaves, but a plain route keeps running to
the end: a client that gives up after 5 s would still cost a full generation. This layer watches the
connection once the request body has been read, and cancels the route on `http.disconnect`; the
pipeline turns that cancellation into the engine's stop signal.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class DisconnectWatchMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = asyncio.Event()  # the app has the whole body: from now on only a disconnect comes
        gone = asyncio.Event()
        response_done = False

        async def app_receive() -> Message:
            if body_done.is_set():
                # Only the watcher reads the connection now; the app (e.g. a streaming response
                # listening for disconnects) learns it from the watcher.
                await gone.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
            elif not message.get("more_body", False):
                body_done.set()
            return message

        async def app_send(message: Message) -> None:
            nonlocal response_done
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                response_done = True
            await send(message)

        async def watch(task: asyncio.Task[None]) -> None:
            await body_done.wait()
            message = await receive()
            while message["type"] != "http.disconnect":  # nothing else may come; be tolerant
                message = await receive()
            gone.set()
            if not response_done:
                task.cancel()

        task = asyncio.ensure_future(self.app(scope, app_receive, app_send))
        watcher = asyncio.ensure_future(watch(task))
        try:
            await task
        except asyncio.CancelledError:
            if not gone.is_set():
                raise  # cancelled from outside (server shutdown), not by us
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

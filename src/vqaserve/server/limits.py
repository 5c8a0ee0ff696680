"""Connection hygiene for `vqa serve`: head and body read deadlines, connection caps.

uvicorn has a keep-alive timeout but no deadline for reading a request: a "slowloris" client that
sends one header byte a second holds a connection (and a slot of `limit_concurrency`) for ever.
`timed_protocol()` subclasses uvicorn's HTTP protocol (httptools when installed, else h11) with two
timers on the event loop:

- head: armed when a connection opens or the next request on a keep-alive connection starts; if the
  head (request line + headers) is not complete within `header_timeout_s`, the client gets 408 and
  the connection is closed;
- body: armed when the head is complete and a body follows; if the whole body has not arrived within
  `body_timeout_s`, the connection is closed (the app sees a disconnect and stops).

Both protocols keep the parsing state in `self.cycle` (`more_body`, `response_complete`), so one
mixin serves both.
"""

from __future__ import annotations

import asyncio
from typing import Any

from vqaserve.settings import Settings

_408_BODY = b"the request head did not arrive within the header timeout"
REQUEST_TIMEOUT_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                       b"content-length: " + str(len(_408_BODY)).encode() + b"\r\nconnection: close\r\n\r\n"
                       + _408_BODY)


class ReadDeadlines:
    """Mixin over a uvicorn HTTP protocol class. Subclasses set the two class attributes."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 120.0
    # Provided by the uvicorn protocol this is mixed into:
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    cycle: Any

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._timed_cycle: Any = None
        self._arm_head()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        if self._head_timer is None and (cycle is None or cycle.response_complete):
            self._arm_head()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)  # type: ignore[misc]
        cycle = self.cycle
        if cycle is not None and cycle is not self._timed_cycle:  # a new request's head is complete
            self._timed_cycle = cycle
            self._cancel_head()
            if cycle.more_body and self._body_timer is None:
                self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_expired)
        if self._body_timer is not None and (cycle is None or not cycle.more_body):
            self._body_timer.cancel()
            self._body_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head()
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm_head(self) -> None:
        self._cancel_head()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_expired)

    def _cancel_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        cycle = self.cycle
        if self.transport.is_closing() or (cycle is not None and not cycle.response_complete):
            return  # a request is being answered: its head did arrive
        self.transport.write(REQUEST_TIMEOUT_408)  # tell the client why, then hang up
        self.transport.close()

    def _body_expired(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not self.transport.is_closing():
            self.transport.close()


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # httptools is an optional uvicorn extra
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base  # type: ignore[assignment]


class TimedHttpProtocol(ReadDeadlines, _Base):  # type: ignore[misc]
    """Module-level, so `--workers N` can pickle the uvicorn config by reference."""


def timed_protocol(header_timeout_s: float, body_timeout_s: float) -> type:
    """The uvicorn HTTP protocol class with these read deadlines (one server per process)."""
    TimedHttpProtocol.header_timeout_s = header_timeout_s
    TimedHttpProtocol.body_timeout_s = body_timeout_s
    return TimedHttpProtocol


def uvicorn_limits(settings: Settings) -> dict[str, Any]:
    """uvicorn.Config keyword arguments for the connection limits and the grace period."""
    s = settings.server
    return {
        "http": timed_protocol(s.header_timeout_s, s.body_timeout_s),
        # Over max_connections concurrent connections+requests uvicorn answers 503 at once
        # instead of queueing without bound; the kernel backlog holds a burst of new connections.
        "limit_concurrency": s.max_connections,
        "backlog": max(64, min(2048, s.max_connections * 2)),
        "timeout_graceful_shutdown": max(1, round(s.shutdown_grace_s)),
        "timeout_keep_alive": 5,
    }

"""Tiny raw-HTTP servers on 127.0.0.0/8 for the fetch tests: scripted routes, and a hit counter."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

Handler = Callable[[asyncio.StreamWriter], Awaitable[None]]


def response(status: str, body: bytes = b"", ctype: str = "image/png", extra: str = "") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{extra}" \
           "Connection: close\r\n\r\n"
    return head.encode() + body


@dataclass
class FakeHost:
    """An HTTP/1.1 server whose routes are raw responses or coroutines; it records every connection."""

    address: str = "127.0.0.1"
    routes: dict[str, bytes | Handler] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)  # request paths, in order
    hosts: list[str] = field(default_factory=list)  # Host headers seen
    connections: int = 0
    port: int = 0
    _server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> FakeHost:
        self._server = await asyncio.start_server(self._serve, self.address, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)

    def url(self, path: str = "/img.png") -> str:
        return f"http://{self.address}:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            self.hits.append(path)
            self.hosts += [ln.split(":", 1)[1].strip() for ln in lines[1:] if ln.lower().startswith("host:")]
            route = self.routes.get(path.split("?")[0], response("404 Not Found", b"nope", "text/plain"))
            if isinstance(route, bytes):
                writer.write(route)
                await writer.drain()
            else:
                await route(writer)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, asyncio.LimitOverrunError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


async def trickle(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(100):
        writer.write(b"\x00")
        await writer.drain()
        await asyncio.sleep(1.0)


async def silent(writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(30)


async def endless(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"\x00" * 65536
    for _ in range(100_000):  # ~6.5 GB if nobody stops reading
        writer.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        await writer.drain()


def gzip_bomb(megabytes: int) -> bytes:
    body = gzip.compress(b"\x00" * (megabytes * 1024 * 1024), compresslevel=9)
    return response("200 OK", body, extra="Content-Encoding: gzip\r\n")


def redirect(location: str, status: str = "302 Found") -> bytes:
    return response(status, b"", "text/plain", f"Location: {location}\r\n")


@contextlib.asynccontextmanager
async def hosts(*servers: FakeHost) -> AsyncIterator[tuple[FakeHost, ...]]:
    async with contextlib.AsyncExitStack() as stack:
        for s in servers:
            await stack.enter_async_context(s)
        yield servers


class ThreadedHost:
    """The same idea for sync tests (FastAPI's TestClient runs the app in another thread's loop)."""

    def __init__(self, routes: dict[str, bytes], address: str = "127.0.0.1") -> None:
        import http.server
        import threading

        host = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                host.hits.append(self.path)
                self.wfile.write(host.routes.get(self.path, response("404 Not Found", b"", "text/plain")))

            def log_message(self, *args: object) -> None:
                pass

        self.routes = routes
        self.hits: list[str] = []
        self.server = http.server.ThreadingHTTPServer((address, 0), Handler)
        self.server.daemon_threads = True
        self.address, self.port = address, self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ThreadedHost:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.address}:{self.port}{path}"

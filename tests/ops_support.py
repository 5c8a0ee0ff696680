"""Helpers for the operations tests: a real `vqa serve` process, an in-process live server, Redis."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port, image_bytes, subprocess_env, vqa_cmd
from tests.http_support import LiveServer
from vqaserve.server.state import app_state

__all__ = ["ServeProcess", "ThreadServer", "chat_body", "free_port", "image_bytes", "redis_server"]


def data_uri(**kw: Any) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(image_bytes(**kw)).decode()


def chat_body(text: str, images: int = 1, stream: bool = False, png: bytes | None = None,
              model: str | None = "scripted") -> dict[str, Any]:
    import base64

    url = ("data:image/png;base64," + base64.b64encode(png).decode()) if png else data_uri()
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": url}} for _ in range(images)]
    parts.append({"type": "text", "text": text})
    body: dict[str, Any] = {"messages": [{"role": "user", "content": parts}], "stream": stream}
    if model is not None:
        body["model"] = model
    return body


def wait_http(url: str, deadline_s: float = 90.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"vqa serve exited early with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError("vqa serve did not come up")


class ServeProcess:
    """`vqa serve --engine scripted` on a free port, in its own session (so no child can hide)."""

    def __init__(self, *args: str, tmp: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"serve-{self.port}.log"
        self.args = ["serve", "--engine", "scripted", "--safety-image", "off", "--port", str(self.port),
                     "--log-level", "warning", *args]
        self.env = subprocess_env(**env)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServeProcess:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(vqa_cmd(*self.args), env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(self.url, proc=self.proc)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def session_alive(self) -> bool:
        """Any process left in the server's process group (the server or a child of it)."""
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self._log.close()


class ThreadServer(LiveServer):
    """An app on a real uvicorn in a thread of the test process, with this project's read deadlines."""

    def __init__(self, app: Any, settings: Any = None) -> None:
        from vqaserve.server.limits import uvicorn_limits

        super().__init__(app, **uvicorn_limits(settings or app_state(app).settings))


@contextlib.contextmanager
def redis_server(tmp: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A throwaway redis-server on a free loopback port, data in `tmp`; yields (url, process)."""
    exe = shutil.which("redis-server")
    if exe is None:
        import pytest

        pytest.skip("redis-server is not installed (make services installs it)")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp),
                             "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
            if time.monotonic() > end or proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)

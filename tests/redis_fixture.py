"""The tests' one redis-server launcher: a private server per test (free port, temp dir, no persistence),
never a system Redis. `make test` installs redis-server (scripts/install-test-services.sh): without it
these tests fail, they do not skip.

The `redis_server` fixture is registered for every test by tests/conftest.py; tests that need two
servers, or one outside a test, build a `RedisServer` themselves.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.servers import PORT_TRIES, port_taken
from tests.waiting import wait_until


def redis_binary() -> str:
    found = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists()
                                             else None)
    if found is None:
        pytest.fail("redis-server is not installed: `make services` (scripts/install-test-services.sh) installs it")
    return found


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_once = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"redis-{self.port}.log"

    def start(self) -> RedisServer:
        """Start on `port`; the first start moves to another free port if that one was taken meanwhile
        (a restart keeps its port: that is what the tests that restart Redis are about)."""
        for _ in range(PORT_TRIES):
            self.proc = subprocess.Popen(
                [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.workdir), "--enable-debug-command", "local",
                 "--protected-mode", "yes", "--logfile", str(self.log_path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_until(self._answers_or_exited, 10, f"redis-server on port {self.port} (its log: {self.log_path})",
                           every=0.02)
            except AssertionError:
                self.kill()
                raise
            if self.proc.poll() is None:
                self.started_once = True
                return self
            log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            if self.started_once or not port_taken(log):
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {log[-2000:]}")
            self.port = free_port()
        raise RuntimeError(f"redis-server found its port taken {PORT_TRIES} times in a row")

    def _answers_or_exited(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            return True
        try:
            return self.command("PING") == "+PONG"
        except OSError:
            return False

    def command(self, *args: str, timeout: float = 1.0) -> str:
        """One RESP command over a plain socket; returns the first reply line."""
        payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(payload.encode())
            return s.recv(65536).split(b"\r\n", 1)[0].decode()

    def send_nowait(self, *args: str) -> socket.socket:
        """Send a command and return the open socket without waiting (for DEBUG SLEEP)."""
        payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        s.sendall(payload.encode())
        return s

    def kill(self) -> None:
        """Die as a crashed Redis does (SIGKILL): clients see connections drop, nothing is saved."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.kill()

"""The HTTP servers tests start, one launcher each: uvicorn in a thread of the test process
(`ThreadedUvicorn`; `LiveServer` for our app, waiting for its start-up) and `vqa serve` as a user runs
it (`ServeProcess`). Redis, PostgreSQL and vLLM have theirs: redis_fixture.py, postgres_fixture.py,
vllm_support.py.

Ports. An in-thread server listens on a socket bound here to port 0: the kernel picks the port and it
stays ours, so no other process can take it between the choice and the listen. A subprocess is not
handed a socket: it gets a port that is free now and, when another process took it meanwhile
(`vqa serve` exits saying "address already in use"), it starts again on another.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port, subprocess_env, vqa_cmd
from tests.waiting import wait_until

PORT_TRIES = 5  # starts on a fresh port after "address already in use"; more is not a race but a bug


def bound_socket(port: int = 0) -> socket.socket:
    """A loopback TCP socket bound (not yet listening: connections to it are refused) to `port`, or to
    a port the kernel picks. A given port is one a test had before and wants again (a restart)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # As uvicorn sets it: a server started again on its old port is not refused while the old server's
    # connections close (they inherit the option). Port 0 still gets a port nothing else has bound.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def port_taken(log: str) -> bool:
    """Whether a server's output says its port was taken (uvicorn, redis-server, PostgreSQL, vLLM)."""
    return "address already in use" in log.lower()


class ThreadedUvicorn:
    """`app` on a real uvicorn in a daemon thread of the test process. The port is reserved from
    construction (`port`, `url`); nothing is accepted until `start()`."""

    def __init__(self, app: Any, port: int = 0, **uvicorn_options: Any) -> None:
        import uvicorn

        self.app = app
        self.socket = bound_socket(port)
        self.port = int(self.socket.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        options = {"log_level": "warning", "access_log": False, **uvicorn_options}
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, **options))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name="test-uvicorn", daemon=True)

    def start(self) -> ThreadedUvicorn:
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), 60, f"uvicorn on {self.url}",
                   every=0.01)
        if not self.server.started:
            raise RuntimeError(f"uvicorn on {self.url} stopped while starting (its error is logged above)")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        self.socket.close()

    def __enter__(self) -> ThreadedUvicorn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LiveServer(ThreadedUvicorn):
    """Our app on a real uvicorn in a thread, entered once the app has started (model loaded)."""

    def __init__(self, app: Any, **uvicorn_options: Any) -> None:
        super().__init__(app, lifespan="on", **uvicorn_options)

    def __enter__(self) -> LiveServer:
        from vqaserve.server.state import app_state

        self.start()
        # The port opens before the model has loaded (server/startup.py): wait for the load too.
        startup = app_state(self.app).startup
        if not startup.done.wait(timeout=600) or startup.failed:
            self.stop()
            raise RuntimeError(f"the app did not start: {startup.status()}")
        return self


class _PortTaken(Exception):
    pass


class ServeProcess:
    """`vqa serve ARGS` as a user runs it: a subprocess on a free loopback port, in its own session (so
    no child of it outlives the test), all its output in `log_path`. Entered once `wait_path` answers
    200 ("/health" for a server that must not wait for its model or upstream, or that needs an API key
    for /ready)."""

    def __init__(self, log_path: Path | str, *args: str, wait_path: str = "/ready", ready_timeout: float = 240,
                 **env: str) -> None:
        self.log_path = Path(log_path)
        self.args, self.env = args, env
        self.wait_path, self.ready_timeout = wait_path, ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._choose_port()

    def _choose_port(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> ServeProcess:
        """Spawn it without waiting (several servers can start together: see `started_together`)."""
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(vqa_cmd("serve", "--port", str(self.port), *self.args),
                                         env=subprocess_env(**self.env), stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    def wait_ready(self) -> ServeProcess:
        for _ in range(PORT_TRIES):
            try:
                wait_until(self._answers, self.ready_timeout,
                           f"vqa serve answering {self.url}{self.wait_path} (its log: {self.log_path})", every=0.1)
                return self
            except _PortTaken:
                self.stop()
                self._choose_port()
                self.start()
            except BaseException:
                self.stop()
                raise
        self.stop()
        raise RuntimeError(f"vqa serve found its port taken {PORT_TRIES} times in a row")

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            log = self.log()
            if port_taken(log):
                raise _PortTaken
            raise RuntimeError(f"vqa serve exited with {self.proc.returncode}; its log ({self.log_path}) "
                               f"ends with:\n{log[-3000:]}")
        try:
            return httpx.get(self.url + self.wait_path, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, grace_s: float = 30) -> None:
        """SIGTERM (a graceful shutdown), SIGKILL after `grace_s`; then whatever is left of its session."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def __enter__(self) -> ServeProcess:
        return self.start().wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- observation -------------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def session_alive(self) -> bool:
        """Any process left in the server's session (the server or a child of it)."""
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        return True


@contextlib.contextmanager
def started_together(*servers: ServeProcess) -> Iterator[tuple[ServeProcess, ...]]:
    """Several `vqa serve` at once: their start-ups overlap; every one is stopped on the way out."""
    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.callback(server.stop)
            server.start()
        for server in servers:
            server.wait_ready()
        yield servers

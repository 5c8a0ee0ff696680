"""Processes a benchmark starts and stops: a `vqa serve` server with given settings, a Redis."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vqaserve.errors import ConfigError

SRC = Path(__file__).resolve().parents[2]  # this checkout's src/, so the server runs this code


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[Any], grace_s: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_http_ready(proc: subprocess.Popen[Any], url: str, timeout_s: float, exited: Any,
                    every_s: float = 0.25) -> bool:
    """Poll `url` until it answers 200 (True) or `timeout_s` passes (False); a child process that exits
    meanwhile raises ConfigError with the message `exited()` builds."""
    import httpx

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise ConfigError(exited())
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(every_s)
    return False


class ServerProcess:
    """`python -m vqaserve serve` on a free loopback port; settings go in as VQA_* variables."""

    def __init__(self, env: dict[str, str], ready_timeout_s: float = 900.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        # The server's output goes to a file (named in errors) so a failed start can be diagnosed.
        fd, self.log_path = tempfile.mkstemp(prefix="vqa-bench-server-", suffix=".log")
        os.close(fd)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> ServerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VQA_")}
        env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
        env.update({"VQA_HOST": "127.0.0.1", "VQA_PORT": str(self.port), **self.env})
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "vqaserve", "serve"], env=env,
                                         stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        proc = self.proc
        assert proc is not None
        if not wait_http_ready(proc, f"{self.url}/ready", self.ready_timeout_s,
                               lambda: f"the benchmark server exited with code {proc.returncode}; "
                                       f"its log: {self.log_path}"):
            self.stop()
            raise ConfigError(f"the benchmark server was not ready within {self.ready_timeout_s:.0f} s; "
                              f"its log: {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisProcess:
    """A throw-away redis-server on a free loopback port, no persistence."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RedisProcess:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ConfigError("redis-server is not installed; install it (apt-get install redis-server) "
                              "or skip the L2 part of `vqa bench cache`")
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.__exit__()
        raise ConfigError("redis-server did not start within 10 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            _stop(self.proc, 5.0)
            self.proc = None


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its children."""
    import psutil

    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return int(total)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its children (vLLM runs an engine-core child)."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system
    return total

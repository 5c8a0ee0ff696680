"""A private PostgreSQL server for the tests: free port, temp dir, trust auth, no fsync; never a
system cluster. One server per test session (`postgres_server`), a fresh database per test
(`postgres_url`); tests that stop or pause a server start their own `PostgresServer`.

PostgreSQL refuses to run as root: as root, initdb and postgres run as the `postgres` user (which
Debian's package creates), in a folder under /tmp that user owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.servers import PORT_TRIES, port_taken
from tests.waiting import wait_until

USER = "vqa"  # the database superuser initdb creates (trust auth on 127.0.0.1 and the socket)


def pg_bin(name: str) -> str | None:
    """A PostgreSQL program: on PATH, else in Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return versions[-1] if versions else None


def _as_owner() -> dict[str, Any]:
    """Popen arguments that run a program as the `postgres` user when we are root."""
    if os.geteuid() != 0:
        return {}
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("running as root and there is no 'postgres' user to run PostgreSQL as "
                    "(`make services`, scripts/install-test-services.sh, installs postgresql, which creates it)")
    return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": [], "cwd": "/tmp"}


class PostgresServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.workdir: Path | None = None
        self.started_once = False

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresServer:
        initdb, postgres = pg_bin("initdb"), pg_bin("postgres")
        if not initdb or not postgres:
            pytest.fail("PostgreSQL is not installed: `make services` (scripts/install-test-services.sh) installs it")
        owner = _as_owner()
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="vqa-pg-"))
            if owner:
                os.chown(self.workdir, owner["user"], owner["group"])
            subprocess.run([initdb, "-D", str(self.workdir / "data"), "-U", USER, "-A", "trust", "-E", "UTF8",
                            "--no-sync", "--no-instructions"], check=True, capture_output=True, timeout=120, **owner)
        # The first start moves to another free port if that one was taken meanwhile; a restart keeps
        # its port (clients of the stopped server reconnect to the same address).
        for _ in range(PORT_TRIES):
            with (self.workdir / "server.log").open("ab") as log:
                self.proc = subprocess.Popen(
                    [postgres, "-D", str(self.workdir / "data"), "-p", str(self.port), "-k", str(self.workdir),
                     "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
                     "-c", "full_page_writes=off", "-c", "max_connections=40"],
                    stdout=log, stderr=log, **owner)
            try:
                wait_until(self._ready_or_exited, 30,
                           f"postgres on port {self.port} (its log: {self.workdir / 'server.log'})", every=0.1)
            except AssertionError:
                self.stop()
                raise
            if self.proc.poll() is None:
                self.started_once = True
                return self
            if self.started_once or not port_taken(self.log_tail()):
                raise RuntimeError(f"postgres exited: {self.log_tail()}")
            (self.workdir / "server.log").write_bytes(b"")  # that attempt's "address already in use"
            self.port = free_port()
        raise RuntimeError(f"postgres found its port taken {PORT_TRIES} times in a row")

    def _ready_or_exited(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            return True
        ready = pg_bin("pg_isready")
        if ready is None:
            raise RuntimeError("pg_isready not found next to postgres")
        return subprocess.run([ready, "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER],
                              timeout=10).returncode == 0

    def log_tail(self) -> str:
        path = self.workdir / "server.log" if self.workdir else None
        return path.read_text(errors="replace")[-2000:] if path and path.exists() else ""

    def create_database(self, name: str) -> str:
        createdb = pg_bin("createdb")
        assert createdb, "createdb not found next to postgres"
        subprocess.run([createdb, "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, name], check=True,
                       capture_output=True, timeout=60)
        return self.url(name)

    def processes(self) -> list[Any]:
        """The postmaster and its backends (for pausing a server as a hung database would be)."""
        import psutil

        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            main = psutil.Process(self.proc.pid)
            return [main, *main.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _signal_all(self, sig: signal.Signals) -> None:
        import psutil

        for process in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):  # a backend that just ended
                process.send_signal(sig)

    def pause(self) -> None:
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_all(signal.SIGCONT)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): clients are disconnected, the data stays for `start()`."""
        if self.proc is not None:
            self.resume()
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None

    def remove(self) -> None:
        try:
            self.stop()
        finally:
            if self.proc is not None:  # stop() failed half-way: never leave a server behind
                self.proc.kill()
                self.proc = None
            self._remove_dir()

    def _remove_dir(self) -> None:
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's server."""
    return postgres_server.create_database(f"t_{uuid.uuid4().hex[:12]}")

"""A real `vqa serve` process: graceful shutdown, keys, slowloris and slow bodies, connection cap."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.ops_support import chat_body, scripted_serve
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


def in_flight(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("vqa_requests_in_flight "):
            return float(line.split()[1]) - 1.0  # minus this /metrics request itself
    raise AssertionError("vqa_requests_in_flight missing from /metrics")


def streamed_text(body: str) -> str:
    chunks = [json.loads(b[6:]) for b in body.split("\n\n") if b.startswith("data: {")]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def ask(url: str, text: str, stream: bool = False) -> tuple[int, str]:
    with httpx.Client(timeout=30) as client:
        if not stream:
            r = client.post(url + "/v1/chat/completions", json=chat_body(text))
            return r.status_code, r.text
        with client.stream("POST", url + "/v1/chat/completions", json=chat_body(text, stream=True)) as r:
            return r.status_code, r.read().decode()


def test_sigterm_lets_in_flight_requests_finish_refuses_new_ones_and_exits_0(tmp_path: Path) -> None:
    with scripted_serve(tmp_path, "--shutdown-grace-s", "40") as server, ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(ask, server.url, f"question {i} [[sleep:6]]", stream=(i == 4))
                   for i in range(5)]
        wait_until(lambda: in_flight(server.url) >= 5, 30, "the 5 requests in flight")
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        time.sleep(0.3)
        # A sixth request after the signal: refused (503 + Retry-After) or the connection is refused.
        try:
            r = httpx.post(server.url + "/v1/chat/completions", json=chat_body("late"), timeout=5)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "shutting_down" and int(r.headers["retry-after"]) >= 1
            ready = httpx.get(server.url + "/ready", timeout=5)
            assert ready.status_code == 503 and ready.json()["status"] == "shutting_down"
        except httpx.ConnectError:
            pass
        results = [f.result(timeout=60) for f in futures]
        for i, (status, body) in enumerate(results):
            assert status == 200, body
            if i == 4:
                assert body.rstrip().endswith("data: [DONE]") and '"error"' not in body
                assert streamed_text(body).startswith("answer to: question 4")
            else:
                assert json.loads(body)["choices"][0]["message"]["content"].startswith(f"answer to: question {i}")
        assert server.proc.wait(timeout=40) == 0, server.log()  # type: ignore[union-attr]
        assert time.monotonic() - signalled < 40  # within the grace period
        assert "grace period over" not in server.log()  # all finished, none was cancelled
        assert not server.session_alive()  # no child process left behind
        assert "Traceback" not in server.log()


def test_sigint_on_an_idle_server_exits_0_at_once(tmp_path: Path) -> None:
    with scripted_serve(tmp_path) as server:
        started = time.monotonic()
        server.proc.send_signal(signal.SIGINT)  # type: ignore[union-attr]
        assert server.proc.wait(timeout=30) == 0, server.log()  # type: ignore[union-attr]
        assert time.monotonic() - started < 15  # ~1 s on an idle machine; shared CI is slower
        assert "grace period over" not in server.log()  # nothing was waited for
        assert not server.session_alive()


def test_keys_on_a_real_server(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("key-from-file\n")
    with scripted_serve(tmp_path, VQA_API_KEYS="key-from-env", VQA_API_KEYS_FILE=str(keys)) as server:
        assert httpx.get(server.url + "/health").status_code == 200
        assert httpx.get(server.url + "/v1/models").status_code == 401
        assert httpx.get(server.url + "/metrics").status_code == 401
        for key in ("key-from-env", "key-from-file"):
            r = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text


class Trickle(threading.Thread):
    """Sends `data` one byte per `every` seconds; records when the server closed the connection."""

    def __init__(self, port: int, data: bytes, every: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.data, self.every = data, every
        self.opened = time.monotonic()
        self.closed_after: float | None = None
        self.reply = b""

    def run(self) -> None:
        try:
            for byte in self.data:
                self.sock.sendall(bytes([byte]))
                self.sock.settimeout(self.every)
                try:
                    chunk = self.sock.recv(4096)
                except TimeoutError:
                    continue
                self.reply += chunk
                if not chunk or self.reply:
                    break
            self.sock.settimeout(30)
            while chunk := self.sock.recv(4096):
                self.reply += chunk
        except OSError:
            pass
        self.closed_after = time.monotonic() - self.opened
        self.sock.close()


def test_slowloris_headers_are_cut_off_while_normal_requests_work(tmp_path: Path) -> None:
    head = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 60 + b"\r\n\r\n"
    with scripted_serve(tmp_path, "--header-timeout-s", "2") as server:
        slow = [Trickle(server.port, head) for _ in range(3)]
        for t in slow:
            t.start()
        for _ in range(5):  # meanwhile the service answers others
            assert ask(server.url, "still serving?")[0] == 200
            time.sleep(0.2)
        for t in slow:
            t.join(timeout=10)
            assert t.closed_after is not None and t.closed_after < 4.5, t.closed_after
            assert t.reply.startswith(b"HTTP/1.1 408"), t.reply[:60]
        assert httpx.get(server.url + "/ready").status_code == 200


def test_slow_bodies_are_cut_off(tmp_path: Path) -> None:
    with scripted_serve(tmp_path, "--body-timeout-s", "2") as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n{\"messages\": ")
        started = time.monotonic()
        reply = b""
        try:
            while chunk := sock.recv(4096):
                reply += chunk
        except OSError:
            pass
        assert time.monotonic() - started < 4.5
        assert b"200 OK" not in reply
        sock.close()
        assert ask(server.url, "next one")[0] == 200


def test_connection_cap_refuses_with_503_and_frees_up(tmp_path: Path) -> None:
    with scripted_serve(tmp_path, "--max-connections", "3", "--header-timeout-s", "2") as server:
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
        for s in idle:
            s.sendall(b"GET /health HTTP/1.1\r\n")  # heads never finished
        time.sleep(0.3)
        r = httpx.get(server.url + "/v1/models")
        assert r.status_code == 503
        # The head deadline (2 s) frees the slots without the clients doing anything.
        wait_until(lambda: httpx.get(server.url + "/v1/models").status_code == 200, 15, "the slots freed",
                   every=0.2)
        for s in idle:
            assert s.recv(100).startswith(b"HTTP/1.1 408")
            s.close()



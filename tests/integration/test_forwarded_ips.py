"""Behind a proxy: X-Forwarded-For names the client only when the request comes from a trusted proxy.

Both the JSON access log and the rate limiter (per client address when no API keys are set) read the
address uvicorn hands the app; `vqa serve --forwarded-allow-ips` decides whether that is the proxy's.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.http_support import ServeProcess

pytestmark = pytest.mark.integration


def two_clients_through_one_proxy(log: Path, *flags: str) -> tuple[list[int], dict[str, str]]:
    """Two clients behind a proxy on 127.0.0.1, one request each, at one request per minute per client."""
    with ServeProcess(log, "--engine", "scripted", "--safety-image", "off", "--rate-limit-rpm", "1", *flags,
                      ready_timeout=240) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        statuses = []
        for n, client in enumerate(["203.0.113.7", "198.51.100.9"]):
            r = http.get("/v1/models", headers={"x-forwarded-for": client, "x-request-id": f"xff-{n}"})
            statuses.append(r.status_code)
    access = [json.loads(ln) for ln in log.read_text().splitlines() if ln.startswith('{"event": "access"')]
    return statuses, {a["request_id"]: a["client"] for a in access if a["request_id"].startswith("xff-")}


def test_a_trusted_proxy_passes_the_client_address_on(tmp_path: Path) -> None:
    statuses, clients = two_clients_through_one_proxy(tmp_path / "serve.log", "--forwarded-allow-ips",
                                                      "127.0.0.1")
    assert statuses == [200, 200]  # each client has its own bucket
    assert clients == {"xff-0": "203.0.113.7", "xff-1": "198.51.100.9"}


def test_by_default_no_proxy_is_trusted(tmp_path: Path) -> None:
    statuses, clients = two_clients_through_one_proxy(tmp_path / "serve.log")
    assert statuses == [200, 429]  # X-Forwarded-For ignored: both are 127.0.0.1, one bucket
    assert clients == {"xff-0": "127.0.0.1", "xff-1": "127.0.0.1"}


def test_a_proxy_not_in_the_list_is_not_believed(tmp_path: Path) -> None:
    statuses, clients = two_clients_through_one_proxy(tmp_path / "serve.log", "--forwarded-allow-ips",
                                                      "10.0.0.0/8")
    assert statuses == [200, 429]
    assert set(clients.values()) == {"127.0.0.1"}


@pytest.mark.parametrize(("flags", "expected"), [
    (("--forwarded-allow-ips", "127.0.0.1"), {"203.0.113.7", "198.51.100.9"}),
    ((), {"127.0.0.1"}),
])
def test_worker_processes_get_the_same_trust(tmp_path: Path, flags: tuple[str, ...], expected: set[str]) -> None:
    # --workers N builds each worker's app from the environment (uvicorn's factory path); the access
    # log is the witness here (each worker keeps its own rate-limit buckets without Redis).
    _statuses, clients = two_clients_through_one_proxy(tmp_path / "serve.log", "--workers", "2", *flags)
    assert set(clients.values()) == expected and len(clients) == 2

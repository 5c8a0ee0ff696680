"""`vqa serve` as a user runs it: a subprocess on a free port, flags applied, JSON access log."""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import pytest

from tests.conftest import free_port, subprocess_env, vqa_cmd
from tests.http_support import user_msg

pytestmark = pytest.mark.integration


def test_vqa_serve_runs_the_app_with_its_flags() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(vqa_cmd("serve", "--engine", "scripted", "--port", str(port), "--max-images", "1"),
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "vqa serve did not become ready"
            time.sleep(0.1)
        assert httpx.get(url + "/").status_code == 200
        ok = httpx.post(url + "/v1/chat/completions", json={"messages": [user_msg("hi")]},
                        headers={"x-request-id": "cli-test-1"})
        assert ok.status_code == 200 and ok.headers["x-request-id"] == "cli-test-1"
        too_many = httpx.post(url + "/v1/chat/completions", json={"messages": [user_msg("hi", images=2)]})
        assert too_many.status_code == 400 and "limit 1" in too_many.json()["error"]["message"]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    lines = [json.loads(ln) for ln in out.decode().splitlines() if ln.startswith('{"event": "access"')]
    (access,) = [ln for ln in lines if ln["request_id"] == "cli-test-1"]
    assert access["path"] == "/v1/chat/completions" and access["status"] == 200
    assert "base64" not in out.decode()

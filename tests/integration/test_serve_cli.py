"""`vqa serve` as a user runs it: a subprocess on a free port, flags applied, JSON access log."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import subprocess_env, vqa_cmd
from tests.http_support import ServeProcess, user_msg

pytestmark = pytest.mark.integration


def test_vqa_serve_runs_the_app_with_its_flags(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    # (generous timeouts: on a busy shared machine a fresh Python process can be slow to answer)
    with ServeProcess(log, "--engine", "scripted", "--max-images", "1", "--safety-image", "off",
                      ready_timeout=240) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        assert http.get("/").status_code == 200
        ok = http.post("/v1/chat/completions", json={"messages": [user_msg("hi")]},
                       headers={"x-request-id": "cli-test-1"})
        assert ok.status_code == 200 and ok.headers["x-request-id"] == "cli-test-1"
        too_many = http.post("/v1/chat/completions", json={"messages": [user_msg("hi", images=2)]})
        assert too_many.status_code == 400 and "limit 1" in too_many.json()["error"]["message"]
    out = log.read_text()
    lines = [json.loads(ln) for ln in out.splitlines() if ln.startswith('{"event": "access"')]
    (access,) = [ln for ln in lines if ln["request_id"] == "cli-test-1"]
    assert access["path"] == "/v1/chat/completions" and access["status"] == 200
    assert "base64" not in out


@pytest.mark.timeout(900)
@pytest.mark.slow  # the subprocess imports torch and transformers before it finds the model missing
def test_a_model_that_cannot_load_is_one_line_and_a_failing_exit(tmp_path: Path) -> None:
    done = subprocess.run(vqa_cmd("serve", "--model", str(tmp_path / "missing-model"), "--port", "0"),
                          env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "vqa: error: model" in done.stderr and "not found" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout

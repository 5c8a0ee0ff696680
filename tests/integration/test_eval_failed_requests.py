"""`vqa eval` whose requests fail does not pass for a (zero) score: it exits 1 and says why."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import free_port, subprocess_env, vqa_cmd

pytestmark = pytest.mark.integration


def test_eval_against_an_unreachable_model_server_fails_loudly(tmp_path: Path) -> None:
    env = subprocess_env(VQA_ENGINE="upstream", VQA_UPSTREAM_URL=f"http://127.0.0.1:{free_port()}/v1",
                         VQA_UPSTREAM_MODEL="shop-toy", VQA_SAFETY_IMAGE="off", VQA_LLM__UPSTREAM_RETRIES="0")
    done = subprocess.run(vqa_cmd("eval", "--synthetic", "test", "--n", "3", "--seed", "1", "--quiet"),
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "3 of 3 requests failed" in done.stderr

"""vLLM's own load generator (`vllm bench serve`, the client vLLM users reach for) against vqaserve.

It sends vLLM's sampling extensions (`ignore_eos`) and streams; every request must succeed against the
gateway and the in-process server alike.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.http_support import ServeProcess
from tests.vllm_support import gateway_env

pytestmark = [pytest.mark.integration, pytest.mark.vllm, pytest.mark.slow]
CLIENT = Path(__file__).resolve().parents[2] / "scripts" / "vllm_bench_client.sh"


def bench(url: str, prompts: int) -> dict[str, int]:
    run = subprocess.run(["bash", str(CLIENT), url, str(prompts)], capture_output=True, text=True, timeout=600)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    counts = dict(re.findall(r"^(Successful|Failed) requests:\s+(\d+)", out, re.M))
    return {k: int(v) for k, v in counts.items()}


def test_vllm_bench_serve_succeeds_through_the_gateway_and_in_process(vllm, tmp_path: Path) -> None:
    with ServeProcess(tmp_path / "gateway.log", **gateway_env(vllm.url)) as gateway:
        assert bench(gateway.url, 16) == {"Successful": 16, "Failed": 0}
    with ServeProcess(tmp_path / "inprocess.log", VQA_SAFETY_IMAGE="off") as server:
        assert bench(server.url, 8) == {"Successful": 8, "Failed": 0}

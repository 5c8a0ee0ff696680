"""The `vqa bench` scenarios that need a real vLLM, at their smallest size, against the session's vLLM
(`--upstream-url`; started without it, they start one the same way: bench/vllm_server.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_bench_scenarios import bench
from tests.vllm_support import ADAPTER
from vqaserve.bench.vllm_server import VllmServer

pytestmark = [pytest.mark.integration, pytest.mark.vllm]


def test_adapter_answers_in_vllm_and_in_process(vllm: VllmServer, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    record = bench(tmp_path, capsys, "adapter-vllm", "--upstream-url", vllm.url + "/v1", "--requests", "3",
                   "--seed", "1")
    f, d = record["figures"], record["details"]
    assert d["adapter"] == ADAPTER and len(d["answers"]) == 3 and all(r["vllm"] for r in d["answers"])
    assert f["equal"] == f"{round(3 * f['adapter_vllm_equal_share'])}/3"
    assert "adapter_vllm_equal_share" in record["targets"]


def test_follow_up_questions_through_a_gateway(vllm: VllmServer, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    record = bench(tmp_path, capsys, "followups", "--upstream-url", vllm.url, "--requests", "2")
    f = record["figures"]
    assert record["details"]["pictures"] == 2 and len(record["details"]["ms"]["What color is it?"]) == 2
    assert f["q1_p50_ms"] > 0 and f["q2_p50_ms"] > 0 and f["followup_q2_over_q1_p50"] is not None
    # This vLLM serves an adapter with vision-tower layers, so scripts/vllm.sh turned its multimodal
    # processor cache off (test_vllm_followups.py shows the hits on a vLLM without one).
    assert f["vllm_mm_cache_hits"] == 0

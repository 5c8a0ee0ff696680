"""scripts/loadgen.py (used by scripts/gpu-check.sh) against the upstream double: counts and figures add up."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.upstream_double import UpstreamDouble

pytestmark = pytest.mark.integration
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "loadgen.py"


@pytest.fixture
def double() -> Iterator[UpstreamDouble]:
    server = UpstreamDouble().start()
    yield server
    server.stop()


def test_loadgen_sends_unique_questions_and_reports_throughput(double: UpstreamDouble) -> None:
    spec = importlib.util.spec_from_file_location("loadgen", SCRIPT)
    assert spec and spec.loader
    loadgen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loadgen)
    args = loadgen.argparse.Namespace(url=double.url, model="double-model", label="t", requests=24,
                                      concurrency=4, warmup=4, max_tokens=8, width=64, height=64,
                                      timeout=10.0, api_key=None)
    result = asyncio.run(loadgen.run(args))
    assert result["ok"] == 24 and result["errors"] == {} and result["requests_per_s"] > 0
    assert result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"]
    questions = [r.body["messages"][0]["content"][1]["text"] for r in double.received]
    assert len(questions) == 28 and len(set(questions)) == 28  # warm-up + measured, never repeated
    assert all(r.images[0][1] == (64, 64) for r in double.received)

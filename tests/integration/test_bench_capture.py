"""`vqa bench capture` end to end at its smallest size: two servers (capture on and off), the hook's
time from the capturing server's own stage histogram, every answer written. Figures checked for
sense, not speed (speed is what the scenario reports on a quiet machine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_bench_scenarios import bench

pytestmark = pytest.mark.integration


def test_capture_cost_compares_servers_with_and_without_capture(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    record = bench(tmp_path, capsys, "capture", "--requests", "2", "--rounds", "2",
                   "--env", "VQA_ENGINE=scripted", "--env", "VQA_SAFETY_IMAGE=off")
    f, d = record["figures"], record["details"]
    assert set(record["targets"]) == {"capture_hook_ms"}
    assert 0 < f["capture_hook_ms"] < 1000
    assert f["capture_written"] == 2 * 2 + 1 and f["capture_dropped"] == 0  # the rounds and the warm-up answer
    assert f["http_p50_on_minus_off_ms"] == round(f["http_p50_capture_on_ms"] - f["http_p50_capture_off_ms"], 2)
    assert [r["ok"] for r in d["http_capture_on"]] == [r["ok"] for r in d["http_capture_off"]] == [2, 2]
    assert d["server_stages_mean_ms_capture_on"]["capture"] == pytest.approx(f["capture_hook_ms"], abs=0.01)

"""Each `vqa bench` scenario family run end to end at its smallest size on the bundled shop-toy: it
prints its figures with the targets' verdicts and writes its JSON record (figures checked for sense,
not speed: speed is what the scenarios report on a quiet machine). One torch thread, as the
benchmarks run on this shared machine: two spin against each other and every other process here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vqaserve.bench.report import check
from vqaserve.cli import main

pytestmark = pytest.mark.integration


def bench(tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    """`vqa bench ...` in this process; its one JSON record, after checking what it printed."""
    assert main(["bench", *argv, "--torch-threads", "1", "--no-progress", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    (path,) = tmp_path.glob(f"bench-{argv[0]}-*.json")
    record: dict[str, Any] = json.loads(path.read_text())
    assert record["scenario"] == argv[0] and str(path) in printed
    for name, target in record["targets"].items():
        assert target["verdict"] == check(name, record["figures"][name]) != ""
        assert name in printed
    return record


def test_stream_compares_streams_with_plain_requests_through_http_and_in_process(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = bench(tmp_path, capsys, "stream", "--concurrency", "2", "--rounds", "1", "--max-new-tokens", "4",
                   "--env", "VQA_SAFETY_IMAGE=off")
    f = record["figures"]
    assert set(record["targets"]) == {"stream_over_plain_rps_c16", "stream_over_plain_rps_c16_in_process"}
    assert f["streams_equal_plain"] is True and f["streams_equal_plain_in_process"] is True
    assert f["stream_over_plain_rps_c16"] == round(f["stream_rps"] / f["plain_rps"], 3)
    assert f["stream_first_text_p50_ms"] > 0 and f["stream_first_text_p50_ms_in_process"] > 0
    assert record["details"]["http_stream_round1"]["ok"] == record["details"]["http_plain_round1"]["ok"] == 2
    assert sum(record["details"]["in_process"]["batch_sizes"]["stream"]) == 2  # the batcher ran the streams


def test_vision_reuse_times_the_tower_and_keeps_the_answers(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    record = bench(tmp_path, capsys, "vision-reuse", "--requests", "2", "--max-new-tokens", "2")
    f, d = record["figures"], record["details"]
    assert f["q1_tower_ms"] > 0 and f["q2_tower_ms"] == 0  # the follow-up never entered the tower
    assert f["answers_equal_with_and_without_reuse"] is True and f["pictures_meeting_target"].endswith("/2")
    assert d["memo"]["hits"] >= 2 and d["pictures"] == 2


def test_structured_answers_follow_the_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = bench(tmp_path, capsys, "structured", "--requests", "2", "--concurrency", "2")
    f = record["figures"]
    assert f["structured_valid_share"] == 1.0 and record["targets"]["structured_valid_share"]["verdict"] == "met"
    assert f["schema_rps"] > 0 and f["free_text_rps"] > 0 and f["schema_mean_completion_tokens"] > 10


def test_offline_scenarios_near_duplicates_and_the_image_check(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    near = bench(tmp_path, capsys, "near-duplicates", "--requests", "2")
    assert near["figures"]["copies"] == 2 * 8 and near["figures"]["hard_negatives"] == 2 * 5
    assert near["figures"]["near_duplicates_false_hits"] == 0
    safety = bench(tmp_path, capsys, "image-safety", "--requests", "2")  # the default checker, NudeNet
    assert safety["details"]["checker"] == "nudenet" and safety["details"]["pictures"] == 2
    assert safety["figures"]["image_safety_false_positives"] == 0 and safety["figures"]["ms_per_image_p50"] > 0


def test_image_safety_with_the_check_off_is_a_one_line_error(capsys: pytest.CaptureFixture[str],
                                                             tmp_path: Path) -> None:
    assert main(["bench", "image-safety", "--env", "VQA_SAFETY_IMAGE=off", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "VQA_SAFETY_IMAGE" in err and "\n" not in err and not list(tmp_path.iterdir())

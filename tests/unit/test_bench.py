"""`vqa bench` parts that need no server: workload, closed-loop load (mock transport), report, CLI."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path

import httpx
import pytest
from PIL import Image

from vqaserve.bench import workload
from vqaserve.bench.load import LoadResult, Sample, run_load
from vqaserve.bench.report import check, ratio, table, write
from vqaserve.cli import main

pytestmark = pytest.mark.unit


def test_replay_sequence_repeats_about_the_asked_share_and_only_earlier_requests() -> None:
    seq = workload.replay_sequence(2000, 0.7, seed=3)
    repeats = 1 - len(set(seq)) / len(seq)
    assert 0.65 < repeats < 0.75
    seen: set[int] = set()
    for i in seq:  # a "new" picture is always the next unseen index; a repeat is one seen before
        assert i in seen or i == len(seen)
        seen.add(i)


def test_chat_body_carries_the_picture_bytes_and_question() -> None:
    item = workload.Item(data=b"\x89PNG...", mime="image/png", question="What color is it?", key="k")
    body = json.loads(workload.chat_body(item, None, 8))
    parts = body["messages"][0]["content"]
    assert base64.b64decode(parts[0]["image_url"]["url"].split(",", 1)[1]) == item.data
    assert parts[1]["text"] == "What color is it?" and body["max_tokens"] == 8 and body["temperature"] == 0


def test_photo_pair_is_one_picture_at_two_sizes() -> None:
    large, small = workload.photo_pair(0, 1, size=(400, 300), small=(128, 96))
    assert Image.open(io.BytesIO(large.data)).size == (400, 300)
    assert Image.open(io.BytesIO(small.data)).size == (128, 96)
    assert large.question == small.question and large.mime == small.mime == "image/jpeg"


async def test_run_load_keeps_exactly_the_asked_concurrency() -> None:
    in_flight = peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        fail = json.loads(request.content)["n"] == 5
        return httpx.Response(429 if fail else 200, headers={"x-vqa-cache": "miss"},
                              json={"choices": [{"message": {"content": "red"}}]})

    bodies = [json.dumps({"n": i}).encode() for i in range(20)]
    res = await run_load("http://bench.test", bodies, 4, progress=False, transport=httpx.MockTransport(handler))
    assert peak == 4
    summary = res.summary()
    assert summary["requests"] == 20 and summary["ok"] == 19 and summary["errors"] == {"429": 1}
    assert summary["cache"]["miss"] == 19 and all(s.answer == "red" for s in res.ok)
    assert summary["p50_ms"] is not None and summary["p50_ms"] >= 10


def test_percentiles_and_ratios() -> None:
    res = LoadResult(concurrency=1, wall_s=2.0,
                     samples=[Sample(s / 1000, 200, "hit" if s < 30 else "miss") for s in (10, 20, 30, 40, 50)])
    assert res.p(50) == 30 and res.p(100) == 50 and res.rps == 2.5
    assert res.p(50, lambda s: s.cache == "hit") == 10  # the lower of the two hits
    assert ratio(3.0, 2.0) == 1.5 and ratio(None, 1.0) is None and ratio(1.0, 0) is None
    assert check("throughput_c16_batching_on_over_off", 2.1) == "met"
    assert check("latency_c1_p50_batching_on_over_off", 1.2) == "MISSED"


def test_report_json_says_how_the_figures_were_made(tmp_path: Path) -> None:
    figures = {"photo_12mp_over_1280": 1.3, "photo_12mp_p50_ms": 120.0}
    path = write(tmp_path, "photo", figures, {"runs": 1}, {"VQA_SAFETY_IMAGE": "off"}, started=0.0)
    record = json.loads(path.read_text())
    assert record["figures"] == figures and record["server_env"] == {"VQA_SAFETY_IMAGE": "off"}
    assert record["targets"]["photo_12mp_over_1280"]["verdict"] == "met"
    assert {"python", "vqaserve"} <= set(record["versions"]) and record["machine"]["cpus"] >= 1
    assert "photo_12mp_over_1280" in table(figures) and "met" in table(figures)


@pytest.mark.parametrize("argv, needle", [
    (["bench", "latency", "--concurrency", "0"], "--concurrency"),
    (["bench", "latency", "--env", "SAFETY=off"], "VQA_NAME=VALUE"),
])
def test_bad_bench_options_are_one_line_errors(argv: list[str], needle: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err

"""The plumbing of `vqa bench`'s scenarios, without a model or a server: options and each scenario's
defaults, the settings its in-process parts get, target verdicts, the JSON record, stream parsing,
and the arithmetic each scenario turns its measurements into."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from vqaserve.bench import adapter_vllm, image_safety, near_duplicates, stream, structured, vision_reuse
from vqaserve.bench.config import settings_for
from vqaserve.bench.load import run_load
from vqaserve.bench.registry import SCENARIOS
from vqaserve.bench.report import TARGETS, check, table, write
from vqaserve.cli import build_parser, main
from vqaserve.cli.bench import config
from vqaserve.errors import ConfigError
from vqaserve.images.decode import data_uri, decode_data_uri

pytestmark = pytest.mark.unit


def bench_config(*argv: str) -> Any:
    args = build_parser().parse_args(["bench", *argv])
    return config(args, args.scenario)


def test_each_scenario_runs_with_its_own_defaults_unless_told_otherwise() -> None:
    structured_cfg = bench_config("structured")
    assert (structured_cfg.requests, structured_cfg.concurrency, structured_cfg.max_new_tokens) == (200, [16], 96)
    stream_cfg = bench_config("stream")
    assert (stream_cfg.concurrency, stream_cfg.max_new_tokens, stream_cfg.rounds) == ([16], 32, 5)
    assert bench_config("latency").concurrency == [1, 4, 16] and bench_config("upstream").concurrency == [1, 16]
    given = bench_config("structured", "--requests", "3", "--concurrency", "2", "--max-new-tokens", "8")
    assert (given.requests, given.concurrency, given.max_new_tokens) == (3, [2], 8)
    assert bench_config("upstream", "--photo-pairs", "0").photo_pairs == 0  # upstream may skip its photos
    assert bench_config("photo", "--photo-pairs", "0").photo_pairs == 1
    assert bench_config("adapter-vllm").adapter is None
    assert bench_config("adapter-vllm", "--adapter", "a=/x/y").adapter == ("a", "/x/y")


def test_vllm_scenarios_put_a_gateway_with_the_models_budget_in_front_of_the_given_vllm() -> None:
    from vqaserve.bench.upstream import UpstreamBench

    cfg = bench_config("followups", "--upstream-url", "http://127.0.0.1:9/v1", "--env", "VQA_SAFETY_IMAGE=nudenet")
    pair = UpstreamBench(cfg)
    assert (pair.upstream_url, pair.model_dir.name, pair.concurrency) == ("http://127.0.0.1:9/v1", "shop-toy", [1])
    env = pair.gateway_env("http://127.0.0.1:9")
    assert env["VQA_UPSTREAM_URL"] == "http://127.0.0.1:9/v1" and env["VQA_ENGINE"] == "upstream"
    assert (env["VQA_MIN_PIXELS"], env["VQA_MAX_PIXELS"]) == ("16384", "25600")  # shop-toy's own budget
    assert env["VQA_SAFETY_IMAGE"] == "nudenet"  # --env wins over the bench's default of off


def test_all_runs_the_five_http_scenarios_and_every_scenario_is_on_the_command_line() -> None:
    assert [s.name for s in SCENARIOS.values() if s.in_all] == ["latency", "throughput", "cache", "photo", "soak"]
    choices = build_parser().parse_args(["bench", "all"])
    assert choices.scenario == "all"
    for name in SCENARIOS:
        assert build_parser().parse_args(["bench", name]).scenario == name


@pytest.mark.parametrize("argv, needle", [
    (["bench", "stream", "--rounds", "0"], "--rounds"),
    (["bench", "structured", "--requests", "0"], "--requests"),
    (["bench", "adapter-vllm", "--adapter", "sunglasses"], "NAME=PATH"),
    (["bench", "stream", "--concurrency", "a,b"], "--concurrency"),
])
def test_bad_scenario_options_are_one_line_errors(argv: list[str], needle: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err


def test_in_process_parts_get_the_settings_a_started_server_would() -> None:
    s = settings_for({"VQA_SAFETY_IMAGE": "off", "VQA_SAFETY__IMAGE_THREADS": "3", "VQA_VISION_MEMO_MB": "0",
                      "VQA_MODEL": "shop-toy", "OMP_NUM_THREADS": "1"})
    assert (s.safety.image, s.safety.image_threads, s.llm.vision_memo_mb, s.llm.model) == ("off", 3, 0, "shop-toy")
    cfg = bench_config("vision-reuse", "--env", "VQA_VISION_MEMO_MB=0", "--model", "shop-toy")
    assert cfg.settings().llm.vision_memo_mb == 0 and cfg.settings(VQA_MODEL="other").llm.model == "other"
    typo = "VQA_" + "SAFTY_IMAGE"  # built, so the repo-wide check of VQA_* names leaves it alone
    with pytest.raises(ConfigError, match=f"unknown setting {typo}"):
        settings_for({typo: "off"})


@pytest.mark.parametrize("name, met, missed", [
    ("stream_over_plain_rps_c16", 0.8, 0.79),
    ("stream_over_plain_rps_c16_in_process", 1.2, 0.65),
    ("vision_reuse_q2_over_q1_minus_tower", 1.0, 1.01),
    ("structured_valid_share", 1.0, 0.995),
    ("near_duplicates_hit_rate", 0.95, 0.94),
    ("near_duplicates_false_hits", 0, 1),
    ("image_safety_false_positives", 0, 1),
    ("adapter_vllm_equal_share", 0.95, 0.94),
])
def test_target_verdicts(name: str, met: float, missed: float) -> None:
    assert check(name, met) == "met" and check(name, missed) == "MISSED" and check(name, None) == ""


def test_every_target_says_which_way_it_points() -> None:
    assert all(op in (">=", "<=") and what for op, _target, what in TARGETS.values())


def test_a_scenario_record_carries_its_targets_and_verdicts(tmp_path: Path) -> None:
    figures = {"stream_over_plain_rps_c16": 0.65, "stream_over_plain_rps_c16_in_process": 0.9, "plain_rps": 145.5,
               "streams_equal_plain": True}
    record = json.loads(write(tmp_path, "stream", figures, {"rounds": 5}, {}, started=0.0).read_text())
    assert record["scenario"] == "stream" and record["figures"] == figures
    assert record["targets"]["stream_over_plain_rps_c16"] == {
        "op": ">=", "target": 0.8, "what": TARGETS["stream_over_plain_rps_c16"][2], "verdict": "MISSED"}
    assert record["targets"]["stream_over_plain_rps_c16_in_process"]["verdict"] == "met"
    lines = table(figures).splitlines()
    assert lines[1].startswith("stream_over_plain_rps_c16 ") and lines[1].endswith("MISSED")  # targets first
    assert any(line.startswith("streams_equal_plain") and line.endswith("True") for line in lines)


def sse(*chunks: object) -> bytes:
    return b"".join(f"data: {c if isinstance(c, str) else json.dumps(c)}\n\n".encode() for c in chunks)


def delta(text: str | None = None, role: str | None = None) -> dict[str, Any]:
    d = {k: v for k, v in (("content", text), ("role", role)) if v is not None}
    return {"choices": [{"index": 0, "delta": d}]}


@pytest.mark.parametrize("body, answer, ok", [
    (sse(delta(role="assistant"), delta("red "), delta("jacket"), {"choices": [], "usage": {}}, "[DONE]"),
     "red jacket", True),
    (sse(delta("red"), {"error": {"message": "deadline"}}, "[DONE]"), "", False),
    (sse(delta("red")), "", False),  # cut off before [DONE]
])
async def test_streams_are_read_to_their_end(body: bytes, answer: str, ok: bool) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["stream"] is True
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream", "x-vqa-cache": "miss"})

    res = await run_load("http://bench.test", [json.dumps({"stream": True}).encode()] * 3, 2, stream=True,
                         progress=False, transport=httpx.MockTransport(handler))
    assert len(res.samples) == 3 and all(s.status == (200 if ok else 599) for s in res.samples)
    if ok:
        assert [s.answer for s in res.ok] == [answer] * 3 and res.ttft(50) is not None
        assert all(s.first_s is not None and s.first_s <= s.seconds for s in res.ok)


def test_stream_rounds_alternate_which_mode_goes_first() -> None:
    assert [stream.order(r) for r in range(3)] == [("plain", "stream"), ("stream", "plain"), ("plain", "stream")]


def test_one_data_uri_builder_that_the_service_reads_back() -> None:
    uri = data_uri(b"\x89PNG\r\n", "image/png")
    assert uri.startswith("data:image/png;base64,") and decode_data_uri(uri, "image_url", 1024) == b"\x89PNG\r\n"


def test_vision_reuse_target_is_judged_on_medians_and_per_picture() -> None:
    rows = [{"q1_ms": q1, "q2_ms": q2, "q2_no_reuse_ms": q1, "q1_tower_ms": 10.0, "q2_tower_ms": 0.0,
             "q2_no_reuse_tower_ms": 10.0, "q2_answer": "red", "q2_no_reuse_answer": "red"}
            for q1, q2 in ((100.0, 85.0), (100.0, 95.0), (100.0, 88.0))]
    out = vision_reuse.summarize(rows)
    assert out["vision_reuse_q2_over_q1_minus_tower"] == round(88.0 / 90.0, 3)
    assert out["pictures_meeting_target"] == "2/3" and out["answers_equal_with_and_without_reuse"] is True
    rows[0]["q2_answer"] = "blue"
    assert vision_reuse.summarize(rows)["answers_equal_with_and_without_reuse"] is False


def test_structured_answers_are_scored_against_the_schema_and_the_gold() -> None:
    schema = {"type": "object", "required": ["category", "color", "pattern", "occasions"],
              "properties": {"category": {"enum": ["hat", "mug"]}, "color": {"enum": ["red", "blue"]},
                             "pattern": {"enum": ["plain"]},
                             "occasions": {"type": "array", "items": {"enum": ["home", "party"]}}}}
    gold = {"category": "hat", "color": "red", "pattern": "plain", "occasion": "party"}
    texts = [json.dumps({"category": "hat", "color": "red", "pattern": "plain", "occasions": ["party"]}),
             json.dumps({"category": "mug", "color": "red", "pattern": "plain", "occasions": ["home"]}),
             '{"category": "hat", "color": "gre',  # cut off by max_tokens
             json.dumps({"category": "scarf", "color": "red", "pattern": "plain", "occasions": []})]
    out = structured.score(texts, [gold] * 4, schema)
    assert out["structured_valid_share"] == 0.5 and out["valid"] == 2 and len(out["invalid_examples"]) == 2
    assert out["accuracy"] == {"category": 0.25, "color": 0.5, "pattern": 0.5, "occasion": 0.25}
    assert out["all_three"] == 0.25


def test_near_duplicate_figures_count_every_kind_of_false_hit() -> None:
    variants = list(near_duplicates.VARIANTS)
    hits = Counter(dict.fromkeys(variants, 2))
    hits[variants[0]] = 1
    out = near_duplicates.summary(2, hits, Counter({variants[1]: 1}), Counter({"label_3pct": 1}),
                                  Counter({"label_3pct": 2, "other_colour": 2}), false_hits=1, identical=0)
    assert out["near_duplicates_hit_rate"] == round((2 * len(variants) - 1) / (2 * len(variants)), 4)
    assert out["near_duplicates_false_hits"] == 3 and out["hard_negatives"] == 4
    assert out["hard_negative_false_hits"] == {"label_3pct": 1, "other_colour": 0}


def test_image_check_costs_and_adapter_comparison() -> None:
    assert image_safety.cost_summary([3.0, 1.0, 2.0, 10.0]) == {"mean": 4.0, "p50": 3.0, "p95": 3.0, "max": 10.0}
    rows = [{"question": "q", "gold": "hat", "in_process": "hat", "vllm": v} for v in ("hat", "hat", "shoe", "hat")]
    out = adapter_vllm.compare(rows)
    assert out["adapter_vllm_equal_share"] == 0.75 and out["equal"] == "3/4"
    assert out["accuracy_in_process"] == 1.0 and out["accuracy_vllm"] == 0.75

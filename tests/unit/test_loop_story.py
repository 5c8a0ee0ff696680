"""The parts of `vqa bench story` (bench/loop_story.py, bench/story_parts.py) that need no model or server:
its options and defaults, its targets, the training flags, the agent at the review list (against a
scripted HTTP transport), and how the live traffic is counted by phase."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from vqaserve.bench.config import BenchConfig
from vqaserve.bench.loop_story import NEW_WORDS, train_args
from vqaserve.bench.report import check
from vqaserve.bench.story_parts import Traffic, catalogue_questions, review, thumbs_down
from vqaserve.cli import build_parser, main
from vqaserve.cli.bench import config

pytestmark = pytest.mark.unit


def story_config(*argv: str) -> BenchConfig:
    args = build_parser().parse_args(["bench", "story", *argv])
    return config(args, "story")


def test_the_story_asks_200_questions_and_trains_within_the_10_minutes_unless_told_otherwise() -> None:
    cfg = story_config()
    assert (cfg.requests, cfg.train_steps, cfg.train_batch_size, cfg.train_minutes, cfg.max_regression) == (
        200, 1500, 32, 8.5, 2.0)
    given = story_config("--requests", "14", "--train-steps", "2", "--train-batch-size", "4", "--train-minutes",
                         "0.5", "--max-regression", "100")
    assert (given.requests, given.train_steps, given.train_batch_size, given.train_minutes, given.max_regression) == (
        14, 2, 4, 0.5, 100.0)


@pytest.mark.parametrize("argv, needle", [
    (["--train-steps", "0"], "--train-steps"),
    (["--train-minutes", "0"], "--train-minutes"),
    (["--max-regression", "-1"], "--max-regression"),
])
def test_bad_story_options_are_one_line_errors(argv: list[str], needle: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "story", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vqa: error: {needle} ") and "\n" not in err and "Traceback" not in err


def test_the_story_refuses_a_running_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "story", "--url", "http://127.0.0.1:9", "--no-progress"]) != 0
    assert "without --url" in capsys.readouterr().err


@pytest.mark.parametrize("name, met, missed", [
    ("story_failed_requests", 0, 1),
    ("story_restarts", 0, 1),
    ("story_train_minutes", 10.0, 10.01),
    ("story_gate_passed", 1, 0),
    ("story_new_category_adapter", 0.80, 0.795),
    ("story_test_drop_points", 2.0, 2.5),
])
def test_story_target_verdicts(name: str, met: float, missed: float) -> None:
    assert check(name, met) == "met" and check(name, missed) == "MISSED"


def test_the_adapter_learns_the_new_words_and_rehearses_the_catalogue_within_the_budget(tmp_path: Any) -> None:
    cfg = story_config("--torch-threads", "1", "--seed", "3")
    args = train_args(tmp_path / "data.jsonl", "shop-toy", tmp_path / "adapter", cfg)
    flags = {a: b for a, b in zip(args, [*args[1:], ""], strict=True) if a.startswith("--")}
    assert args[0] == str(tmp_path / "data.jsonl") and flags["--model"] == "shop-toy" and "--lora" in flags
    assert flags["--lora-new-words"] == NEW_WORDS and "qkv" in flags["--lora-targets"]
    assert flags["--synthetic"].startswith("train:") and float(flags["--time-budget-min"]) == 8.5
    assert (flags["--threads"], flags["--seed"], args[-1]) == ("1", "3", str(tmp_path / "adapter"))


def test_questions_come_with_their_true_answers_in_both_languages() -> None:
    asked = catalogue_questions("adapter", 4, 5, qtype="category", cache=False)
    assert [a.gold for a in asked] == ["sunglasses", "太阳镜", "sunglasses", "太阳镜"]
    body = json.loads(asked[0].body)
    assert body["cache"] is False and "model" not in body and body["max_tokens"] == 64
    assert body["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    mixed = catalogue_questions("adapter", 7, 5)
    assert len({a.type for a in mixed}) == 7  # the seven types in turn, as `vqa data synth` writes them


class Shop:
    """A capture service's routes, scripted: two review pages, the photos, and the ratings posted."""

    def __init__(self, listed: list[dict[str, Any]]) -> None:
        self.listed, self.posted = listed, []  # type: list[dict[str, Any]], list[dict[str, Any]]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/captures":
            offset = int(request.url.params["offset"])
            page = self.listed[offset:offset + 2]  # the route's limit, shrunk
            return httpx.Response(200, json={"data": page, "total": len(self.listed)})
        if "/pictures/" in request.url.path:
            return httpx.Response(200, content=b"\x89PNG", headers={"content-type": "image/png"})
        self.posted.append(json.loads(request.content))
        return httpx.Response(200, json={"status": "saved"})


async def test_the_agent_corrects_wrong_answers_confirms_right_ones_and_looks_at_every_photo() -> None:
    listed = [{"id": "a", "answer": "hat", "images": ["h1"]}, {"id": "b", "answer": "太阳镜", "images": ["h2"]},
              {"id": "c", "answer": "mug", "images": ["h3"]}]
    shop = Shop(listed)
    async with httpx.AsyncClient(base_url="http://shop.test", transport=httpx.MockTransport(shop)) as client:
        counts = await review(client, {"a": "sunglasses", "b": "太阳镜"})
        assert await thumbs_down(client, ["z"]) == 1
    assert counts == {"listed": 3, "photos_seen": 3, "corrected": 1, "confirmed": 1, "not_ours": 1}
    assert shop.posted == [{"id": "a", "rating": "down", "correction": "sunglasses"}, {"id": "b", "rating": "up"},
                           {"id": "z", "rating": "down"}]


async def test_a_refused_rating_stops_the_story_with_the_routes_words() -> None:
    from vqaserve.errors import ConfigError

    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(409, json={"error": {"message": "capture is off: set VQA_CAPTURE_URL"}})

    async with httpx.AsyncClient(base_url="http://shop.test", transport=httpx.MockTransport(refuse)) as client:
        with pytest.raises(ConfigError, match="POST /v1/feedback answered 409: .*VQA_CAPTURE_URL"):
            await thumbs_down(client, ["a"])


def test_live_traffic_is_counted_by_the_phase_each_request_was_sent_in() -> None:
    traffic = Traffic("http://shop.test", {}, [b"{}"])
    traffic.done = [("before", 200, "shop-toy"), ("while changing to canary", 200, "v1@ab"),
                    ("canary", 200, "v1@ab"), ("canary", 200, "shop-toy"), ("canary", 503, ""),
                    ("canary", 599, ""), ("all", 200, "v1@cd")]
    out = traffic.summary("v1")
    assert list(out) == ["before", "while changing to canary", "canary", "all"]
    assert out["canary"] == {"requests": 4, "failed": 2, "statuses": {"200": 2, "503": 1, "599": 1},
                             "adapter_share": 0.5}
    assert out["before"]["adapter_share"] == 0.0 and out["all"]["adapter_share"] == 1.0
    assert traffic.summary("v")["all"]["adapter_share"] == 0.0  # a name, not a prefix of one

"""Confidence: the rule, the scripted engine's, through the pipeline (cache, refusals, streams), the
cache codec, the upstream wire format and /metrics."""

from __future__ import annotations

import json
import math

import pytest

from cache_helpers import BlockWord, ask, image_bytes, make_pipeline
from vqaserve import confidence
from vqaserve.cache import codec
from vqaserve.components import Components
from vqaserve.engines.scripted import ScriptedEngine
from vqaserve.engines.upstream_wire import answer_confidence, build_body, parse_logprobs
from vqaserve.metrics import Metrics
from vqaserve.pipeline import Pipeline
from vqaserve.settings import Settings
from vqaserve.types import Answer, EngineRequest, GenerationParams, Part, StreamDelta, Turn, Usage

pytestmark = pytest.mark.unit
PNG = image_bytes()


def test_the_rule_is_the_least_probable_answer_token() -> None:
    values = [-0.1, -2.0, -0.5]
    assert confidence.of_answer(values, ended_by_token=False) == pytest.approx(math.exp(-2.0))
    # the end token is not the answer's: its doubt (say more?) is left out ...
    assert confidence.of_answer([-0.1, -0.2, -3.0], ended_by_token=True) == pytest.approx(math.exp(-0.2))
    # ... unless it is all there is
    assert confidence.of_answer([-0.7], ended_by_token=True) == pytest.approx(math.exp(-0.7))
    assert confidence.of_answer([], ended_by_token=False) == 1.0
    assert confidence.of_answer([-9999.0], ended_by_token=False) == 0.0
    assert confidence.of_answer([0.0], ended_by_token=False) == 1.0


def test_review_is_a_known_confidence_under_the_threshold() -> None:
    assert confidence.needs_review(0.49, 0.5) and not confidence.needs_review(0.5, 0.5)
    assert not confidence.needs_review(None, 0.5)  # unknown is not low
    assert not confidence.needs_review(0.0, 0.0)  # VQA_REVIEW_BELOW=0 flags nothing


async def test_scripted_confidence_and_logprobs_follow_the_marker() -> None:
    engine = ScriptedEngine()

    def req(text: str, logprobs: int | None = None) -> EngineRequest:
        return EngineRequest(turns=[Turn("user", [Part(text=text)])], params=GenerationParams(logprobs=logprobs))

    low, high, listed = await engine.generate([req("[[say:blue]] [[confidence:0.2]]"), req("[[say:red dress]]"),
                                               req("[[say:a red dress]] [[confidence:0.3]]", logprobs=2)])
    assert not isinstance(low, Exception) and not isinstance(high, Exception) and not isinstance(listed, Exception)
    assert (low.confidence, high.confidence) == (pytest.approx(0.2), 1.0)
    assert low.logprobs is None  # not asked
    assert [t.token for t in listed.logprobs or []] == ["a", " red", " dress"]
    assert listed.confidence == pytest.approx(math.exp(min(t.logprob for t in listed.logprobs or [])))
    assert all(t.top == (t.__class__(t.token, t.logprob, t.bytes),) for t in listed.logprobs or [])


async def test_a_cache_hit_answers_with_the_stored_confidence() -> None:
    engine = ScriptedEngine()
    p = make_pipeline(engine)
    first = await p.answer(ask("[[say:blue]] [[confidence:0.25]]", PNG))
    second = await p.answer(ask("[[say:blue]] [[confidence:0.25]]", PNG))
    assert (first.cache, second.cache) == ("miss", "hit") and engine.generations == 1
    assert first.confidence == second.confidence == pytest.approx(0.25)
    status, stream = await p.open_stream(ask("[[say:blue]] [[confidence:0.25]]", PNG, stream=True))
    deltas = [d async for d in stream]
    assert status == "hit" and deltas[-1].confidence == pytest.approx(0.25)


async def test_logprobs_requests_bypass_the_cache() -> None:
    engine = ScriptedEngine()
    p = make_pipeline(engine)
    asked = GenerationParams(logprobs=1)
    for _ in range(2):
        answer = await p.answer(ask("[[say:blue]]", PNG, params=asked))
        assert answer.cache == "bypass" and [t.token for t in answer.logprobs or []] == ["blue"]
    assert (await p.answer(ask("[[say:blue]]", PNG))).cache == "miss"  # the key did not change
    assert engine.generations == 3


async def test_a_refusal_has_confidence_zero_and_no_logprobs() -> None:
    p = make_pipeline(ScriptedEngine(), output_filter=BlockWord())
    answer = await p.answer(ask("[[say:a forbidden word]]", PNG, params=GenerationParams(logprobs=0)))
    assert answer.finish_reason == "content_filter" and answer.confidence == 0.0 and answer.logprobs is None
    status, stream = await p.open_stream(ask("[[say:another forbidden word]]", PNG, stream=True))
    deltas = [d async for d in stream]
    assert deltas[-1].finish_reason == "content_filter" and deltas[-1].confidence == 0.0


async def test_a_stream_ends_with_the_confidence_and_all_logprobs() -> None:
    p = make_pipeline(ScriptedEngine())
    q = ask("[[say:a red dress]] [[confidence:0.4]]", PNG, params=GenerationParams(logprobs=0), stream=True)
    status, stream = await p.open_stream(q)
    deltas: list[StreamDelta] = [d async for d in stream]
    assert status == "bypass"
    assert all(d.confidence is None and d.logprobs is None for d in deltas[:-1])
    assert deltas[-1].confidence == pytest.approx(0.4)
    assert "".join(t.token for t in deltas[-1].logprobs or []) == "a red dress"


def test_codec_keeps_the_confidence_and_refuses_entries_without_it() -> None:
    answer = Answer(text="blue", model="m", usage=Usage(3, 1), confidence=0.375)
    assert codec.decode("k", codec.encode("k", answer)).confidence == 0.375  # type: ignore[union-attr]
    unknown = Answer(text="blue", model="m", confidence=None)
    assert codec.decode("k", codec.encode("k", unknown)).confidence is None  # type: ignore[union-attr]
    stored = json.loads(codec.encode("k", answer))
    for bad in ("missing", 1.5, -0.1, "0.3", True, float("nan")):
        value = {k: v for k, v in stored.items() if k != "confidence"}
        if bad != "missing":
            value["confidence"] = bad
        assert codec.decode("k", json.dumps(value)) is None, bad  # written before confidence, or foreign


def test_upstream_asks_for_logprobs_always_and_reads_them() -> None:
    request = EngineRequest(turns=[Turn("user", [Part(text="hi")])], params=GenerationParams())
    assert (build_body(request, "m", [], stream=False)["logprobs"],
            build_body(request, "m", [], stream=False)["top_logprobs"]) == (True, 0)
    asked = EngineRequest(turns=request.turns, params=GenerationParams(logprobs=3))
    assert build_body(asked, "m", [], stream=True)["top_logprobs"] == 3
    content = {"content": [
        {"token": "m", "logprob": -0.65, "bytes": [109], "top_logprobs": [{"token": "m", "logprob": -0.65,
                                                                           "bytes": [109]}]},
        {"token": "ug", "logprob": -0.01, "bytes": [117, 103], "top_logprobs": []},
        {"token": "<|im_end|>", "logprob": -2.5, "bytes": None, "top_logprobs": []}]}
    tokens = parse_logprobs(content)
    assert tokens is not None and [t.token for t in tokens] == ["m", "ug", "<|im_end|>"]
    assert tokens[0].top[0].bytes == (109,) and tokens[2].bytes is None
    # EOS (stop_reason null) and a stop token id (an int) are end tokens; a stop string is text
    assert answer_confidence(tokens, "stop", None) == pytest.approx(math.exp(-0.65))
    assert answer_confidence(tokens, "stop", 151645) == pytest.approx(math.exp(-0.65))
    assert answer_confidence(tokens, "stop", "ug") == pytest.approx(math.exp(-2.5))
    assert answer_confidence(tokens, "length", None) == pytest.approx(math.exp(-2.5))
    assert answer_confidence(None, "stop", None) is None  # a server that sends none: unknown
    assert parse_logprobs(None) is None and parse_logprobs({"content": [{"token": "x"}]}) is None


async def test_metrics_get_a_confidence_histogram_and_flagged_answers_by_model() -> None:
    metrics = Metrics()
    p = Pipeline(Settings(review_below=0.5), ScriptedEngine(adapter_names=["v2"]),
                 Components(answered=metrics.observe_answer))
    for text, model in (("[[confidence:0.3]]", None), ("[[confidence:0.9]]", None), ("[[confidence:0.1]]", "v2")):
        await p.answer(ask(text, PNG, model=model))
    page = metrics.render().decode()
    assert 'vqa_answer_confidence_count{model="scripted"} 2.0' in page
    assert 'vqa_answer_confidence_bucket{le="0.3",model="scripted"} 1.0' in page
    assert 'vqa_answers_flagged_total{model="scripted"} 1.0' in page
    assert 'vqa_answers_flagged_total{model="v2"} 1.0' in page

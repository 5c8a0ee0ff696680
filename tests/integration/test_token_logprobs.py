"""Log-probabilities and confidence from the in-process engine, on the tiny random Qwen3-VL.

The reference is independent of the recorder: the same prompt through `model.generate` (greedy, no
processors of ours) gives the ids, and one plain forward pass over prompt + ids (teacher forcing)
gives the log-softmax at every generated place. The engine must report exactly those values: the
model's raw distribution, before repetition_penalty and temperature, each batched row its own.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tiny_vlm import QUESTIONS, four_pictures, ok, request, started_engine

from vqaserve import confidence
from vqaserve.engines.hf_generation import generation_kwargs
from vqaserve.engines.transformers import TransformersEngine
from vqaserve.types import EngineRequest, EngineResult, NormalizedImage, StreamDelta

pytestmark = pytest.mark.integration
TOL = 1e-4  # float32 on CPU: batched and single passes differ in the last bits


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[TransformersEngine]:
    yield from started_engine(tiny_model_dir)


@pytest.fixture(scope="module")
def pictures() -> list[NormalizedImage]:
    return four_pictures()


async def reference(engine: TransformersEngine, req: EngineRequest, **overrides: Any) -> tuple[list[int], Any]:
    """(the ids model.generate gives with the engine's settings but none of its processors, and the
    log-softmax at each of their places from one teacher-forced forward pass)."""
    def work() -> tuple[list[int], Any]:
        import torch

        inputs = engine._prepare([req])
        prompt_len = int(inputs["input_ids"].shape[1])
        config = generation_kwargs(engine._model.generation_config, req.params, req.params.max_new_tokens)
        if req.params.seed is not None:
            torch.manual_seed(req.params.seed)
        with torch.inference_mode():
            ids = engine._model.generate(**inputs, generation_config=config, **overrides)[0, prompt_len:].tolist()
            extra = torch.tensor([ids])
            forced = dict(inputs)
            for name, value in inputs.items():  # every per-token input grows by the answer
                if torch.is_tensor(value) and value.dim() == 2 and value.shape[1] == prompt_len:
                    tail = extra if name == "input_ids" else (
                        torch.ones_like(extra) if name == "attention_mask" else torch.zeros_like(extra))
                    forced[name] = torch.cat([value, tail], dim=1)
            logits = engine._model(**forced).logits[0].float()
        return ids, torch.log_softmax(logits[prompt_len - 1:prompt_len - 1 + len(ids)], dim=-1)
    return await asyncio.get_running_loop().run_in_executor(engine._executor, work)


def token_text(engine: TransformersEngine, token_id: int) -> str:
    return str(engine._processor.tokenizer.decode([token_id]))


def assert_matches_reference(engine: TransformersEngine, result: EngineResult, ids: list[int], ref: Any) -> None:
    assert result.logprobs is not None and len(result.logprobs) == len(ids)
    for step, (token, token_id) in enumerate(zip(result.logprobs, ids, strict=True)):
        assert token.token == token_text(engine, token_id), step
        if "\ufffd" not in token.token:  # else a piece of a character, whose own bytes are given
            assert token.bytes == tuple(token.token.encode())
        assert abs(token.logprob - float(ref[step, token_id])) < TOL, (step, token.logprob, float(ref[step, token_id]))
    text = str(engine._processor.tokenizer.decode(ids))
    if "\ufffd" not in text:  # the tokens' bytes join into the answer's
        assert b"".join(bytes(t.bytes or b"") for t in result.logprobs).decode() == text


async def test_logprobs_equal_a_teacher_forced_forward_pass(engine: TransformersEngine,
                                                            pictures: list[NormalizedImage]) -> None:
    req = request(QUESTIONS[0], pictures[0], logprobs=3, max_new_tokens=8)
    result = ok((await engine.generate([req]))[0])
    ids, ref = await reference(engine, req)
    assert result.finish_reason == "length" and len(ids) == 8  # a random model: it never says EOS here
    assert_matches_reference(engine, result, ids, ref)
    # the top 3 at each place: the reference's three most likely, sorted, the chosen among them when it is
    for step, token in enumerate(result.logprobs or []):
        values, top_ids = ref[step].topk(3)
        assert [t.token for t in token.top] == [token_text(engine, int(i)) for i in top_ids]
        assert [t.logprob for t in token.top] == pytest.approx(values.tolist(), abs=TOL)
        assert [t.logprob for t in token.top] == sorted((t.logprob for t in token.top), reverse=True)
        if ids[step] in top_ids.tolist():
            assert token.token in [t.token for t in token.top]
    # greedy: the chosen token is the most likely one, so confidence is its least probability
    assert result.confidence == pytest.approx(math.exp(min(t.logprob for t in result.logprobs or [])), abs=1e-6)
    assert 0.0 <= (result.confidence or 0.0) <= 1.0


async def test_batched_rows_get_their_own_values(engine: TransformersEngine,
                                                 pictures: list[NormalizedImage]) -> None:
    batch = [request(q, im, logprobs=2, max_new_tokens=6) for q, im in zip(QUESTIONS, pictures, strict=True)]
    together = [ok(r) for r in await engine.generate(batch)]
    alone = [ok((await engine.generate([request(q, im, logprobs=2, max_new_tokens=6)]))[0])
             for q, im in zip(QUESTIONS, pictures, strict=True)]
    assert len({r.usage.prompt_tokens for r in together}) > 1  # left padding was exercised
    assert len({r.confidence for r in together}) > 1  # the rows really differ
    for a, b in zip(together, alone, strict=True):
        assert [t.token for t in a.logprobs or []] == [t.token for t in b.logprobs or []]
        assert [t.logprob for t in a.logprobs or []] == pytest.approx([t.logprob for t in b.logprobs or []], abs=TOL)
        assert a.confidence == pytest.approx(b.confidence, abs=TOL)


async def test_confidence_without_logprobs_and_the_end_token_rule(engine: TransformersEngine,
                                                                  pictures: list[NormalizedImage]) -> None:
    plain = ok((await engine.generate([request(QUESTIONS[1], pictures[1], max_new_tokens=8)]))[0])
    asked = ok((await engine.generate([request(QUESTIONS[1], pictures[1], max_new_tokens=8, logprobs=0)]))[0])
    assert plain.logprobs is None and plain.confidence == asked.confidence  # always there, asked or not
    assert all(t.top == () for t in asked.logprobs or [])  # top_logprobs 0: none
    ids, ref = await reference(engine, request(QUESTIONS[1], pictures[1], max_new_tokens=8))
    # A stop token id ends the answer: it is the last logprobs entry, and left out of the confidence.
    stop = ids[3]
    ended = ok((await engine.generate([request(QUESTIONS[1], pictures[1], max_new_tokens=8, logprobs=0,
                                               stop_token_ids=(stop,))]))[0])
    cut = ids[:ids.index(stop) + 1]
    assert_matches_reference(engine, ended, cut, ref[:len(cut)])
    values = [float(ref[i, t]) for i, t in enumerate(cut)]
    assert ended.finish_reason == "stop"
    assert ended.confidence == pytest.approx(confidence.of_answer(values, ended_by_token=True), abs=TOL)
    if len(cut) > 1:
        assert ended.confidence == pytest.approx(math.exp(min(values[:-1])), abs=TOL)


async def test_raw_distribution_before_penalty_and_temperature(engine: TransformersEngine,
                                                               pictures: list[NormalizedImage]) -> None:
    # vLLM's raw_logprobs: the model's own values, whatever repetition_penalty or temperature chose.
    penalised = dict(logprobs=1, max_new_tokens=8, repetition_penalty=1.8)
    result = ok((await engine.generate([request(QUESTIONS[2], pictures[2], **penalised)]))[0])
    ids, ref = await reference(engine, request(QUESTIONS[2], pictures[2], **penalised), repetition_penalty=1.8)
    assert_matches_reference(engine, result, ids, ref)
    plain_ids, _ = await reference(engine, request(QUESTIONS[2], pictures[2], max_new_tokens=8))
    assert ids != plain_ids  # the penalty did act
    for temperature in (1.7, 0.3):
        sampled = dict(logprobs=0, max_new_tokens=8, temperature=temperature, seed=5)
        result = ok((await engine.generate([request(QUESTIONS[2], pictures[2], **sampled)]))[0])
        ids, ref = await reference(engine, request(QUESTIONS[2], pictures[2], **sampled))
        assert_matches_reference(engine, result, ids, ref)


async def test_json_schema_answers_have_logprobs(engine: TransformersEngine,
                                                 pictures: list[NormalizedImage]) -> None:
    schema = json.dumps({"type": "object", "properties": {"c": {"enum": ["red", "blue"]}}, "required": ["c"],
                         "additionalProperties": False})
    result = ok((await engine.generate([request(QUESTIONS[0], pictures[0], logprobs=2, max_new_tokens=24,
                                                json_schema=schema)]))[0])
    assert json.loads(result.text)["c"] in ("red", "blue")
    tokens = result.logprobs or []
    assert "".join(t.token for t in tokens).startswith(result.text)  # then the end token
    assert all(t.logprob <= 0.0 for t in tokens)
    # forced tokens (the grammar allows one) are certain under the masked distribution
    assert any(t.logprob == pytest.approx(0.0, abs=1e-6) for t in tokens)
    assert result.confidence == pytest.approx(
        confidence.of_answer([t.logprob for t in tokens], ended_by_token=result.finish_reason == "stop"), abs=1e-9)


async def test_a_stream_ends_with_the_confidence_and_logprobs(engine: TransformersEngine,
                                                              pictures: list[NormalizedImage]) -> None:
    whole = ok((await engine.generate([request(QUESTIONS[3], pictures[3], logprobs=1, max_new_tokens=8)]))[0])
    deltas: list[StreamDelta] = [d async for d in engine.stream(request(QUESTIONS[3], pictures[3], logprobs=1,
                                                                        max_new_tokens=8))]
    assert "".join(d.text for d in deltas) == whole.text
    assert all(d.confidence is None and d.logprobs is None for d in deltas[:-1])
    assert deltas[-1].confidence == pytest.approx(whole.confidence, abs=TOL)
    assert [t.token for t in deltas[-1].logprobs or []] == [t.token for t in whole.logprobs or []]


def test_a_character_split_over_two_tokens_keeps_its_bytes() -> None:
    from transformers import AutoTokenizer

    from vqaserve.engines.token_logprobs import TokenNames
    from vqaserve.settings import BUNDLED_MODELS

    tokenizer = AutoTokenizer.from_pretrained(BUNDLED_MODELS / "shop-toy")
    names = TokenNames(tokenizer)
    ids = [*tokenizer.encode("格子 a red"), tokenizer.convert_tokens_to_ids("<|im_end|>")]
    named = [names.name(i) for i in ids]
    assert named[0][0] == "\ufffd"  # 格's first byte alone: its text is a replacement character ...
    assert b"".join(b for _, b in named).decode() == "格子 a red<|im_end|>"  # ... its bytes are its own
    assert [text for text, _ in named[2:]] == [" a", " red", "<|im_end|>"]


async def test_a_stop_string_cuts_the_text_and_its_tokens_still_count(engine: TransformersEngine,
                                                                      pictures: list[NormalizedImage]) -> None:
    full = ok((await engine.generate([request(QUESTIONS[0], pictures[1], max_new_tokens=10)]))[0])
    middle = len(full.text) // 2
    stop = full.text[middle:middle + 2]
    assert stop.strip(), full.text  # the tiny model's answer has text in its middle
    cut = ok((await engine.generate([request(QUESTIONS[0], pictures[1], max_new_tokens=10, logprobs=0,
                                             stop=(stop,))]))[0])
    assert cut.finish_reason == "stop" and cut.text == full.text[:full.text.index(stop)]
    tokens = cut.logprobs or []
    assert len(tokens) == cut.usage.completion_tokens  # up to the token that completed the stop string
    assert "".join(t.token for t in tokens).startswith(cut.text + stop[:1])
    # a stop string is text, not an end token: every token counts
    assert cut.confidence == pytest.approx(math.exp(min(t.logprob for t in tokens)), abs=1e-9)

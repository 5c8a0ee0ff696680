"""vLLM's sampling extensions in the transformers engine, on the tiny random Qwen3-VL.

Properties against the engine's own plain answer: stop_token_ids stop and leave the token out,
ignore_eos runs to max_tokens, min_tokens holds back EOS, stop ids and stop strings, min_p=1 is
greedy, repetition_penalty changes a looping answer, and mixed batches equal one by one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tiny_vlm import COLOURS, QUESTIONS, SIZES, ok, picture, request

from vqaserve.engines.transformers import TransformersEngine
from vqaserve.settings import load_settings
from vqaserve.types import EngineRequest, EngineResult, NormalizedImage

pytestmark = pytest.mark.integration
N = 12  # max_new_tokens of the plain answers; the tiny model never says EOS within it


class Spy:
    """Wraps model.generate to keep the token ids it produced (the engine returns text only)."""

    def __init__(self, engine: TransformersEngine) -> None:
        self.real = engine._model.generate
        self.outputs: list[list[int]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.real(*args, **kwargs)
        prompt_len = kwargs["input_ids"].shape[1]
        self.outputs.extend(row[prompt_len:].tolist() for row in out)
        return out


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[TransformersEngine]:
    # Its own engine: tests here change the model's EOS, which must not leak into other modules.
    eng = TransformersEngine(load_settings(model=str(tiny_model_dir)))
    asyncio.run(eng.start())
    eng._model.generate = Spy(eng)  # type: ignore[method-assign]
    yield eng
    asyncio.run(eng.close())


@pytest.fixture(scope="module")
def pictures() -> list[NormalizedImage]:
    return [picture(s, c) for s, c in zip(SIZES, COLOURS, strict=True)]


async def answer(engine: TransformersEngine, req: EngineRequest) -> EngineResult:
    return ok((await engine.generate([req]))[0])


async def plain_ids(engine: TransformersEngine, image: NormalizedImage) -> tuple[EngineResult, list[int]]:
    result = await answer(engine, request(QUESTIONS[0], image, max_new_tokens=N))
    ids = engine._model.generate.outputs[-1]  # type: ignore[attr-defined]
    assert result.finish_reason == "length" and len(ids) == N  # no EOS: the tests below need that
    return result, ids


def first_new_at(ids: list[int], start: int) -> int:
    """The first position >= start whose token did not occur before it."""
    return next(k for k in range(start, len(ids)) if ids[k] not in ids[:k])


def decode(engine: TransformersEngine, ids: list[int]) -> str:
    return str(engine._processor.tokenizer.decode(ids, skip_special_tokens=True))


async def test_stop_token_id_ends_the_answer_and_its_text_is_left_out(engine: TransformersEngine,
                                                                     pictures: list[NormalizedImage]) -> None:
    _, ids = await plain_ids(engine, pictures[0])
    k = first_new_at(ids, 2)
    params: dict[str, Any] = {"max_new_tokens": N, "stop_token_ids": (ids[k],)}
    stopped = await answer(engine, request(QUESTIONS[0], pictures[0], **params))
    assert (stopped.finish_reason, stopped.usage.completion_tokens) == ("stop", k + 1)
    assert stopped.text == decode(engine, ids[:k])
    kept = await answer(engine, request(QUESTIONS[0], pictures[0], include_stop_str_in_output=True,
                                        **params))
    assert kept.text == decode(engine, ids[:k + 1]) != stopped.text
    deltas = [d async for d in engine.stream(request(QUESTIONS[0], pictures[0], **params))]
    assert "".join(d.text for d in deltas) == stopped.text
    assert (deltas[-1].finish_reason, deltas[-1].usage) == ("stop", stopped.usage)


async def test_min_tokens_holds_back_a_stop_token_id(engine: TransformersEngine,
                                                     pictures: list[NormalizedImage]) -> None:
    _, ids = await plain_ids(engine, pictures[0])
    k = first_new_at(ids, 1)
    result = await answer(engine, request(QUESTIONS[0], pictures[0], max_new_tokens=N,
                                          stop_token_ids=(ids[k],), min_tokens=k + 3))
    assert result.usage.completion_tokens >= k + 3
    produced = engine._model.generate.outputs[-1]  # type: ignore[attr-defined]
    assert ids[k] not in produced[:k + 3]  # suppressed, not just ignored


async def test_ignore_eos_runs_to_max_tokens_and_min_tokens_holds_eos_back(
        engine: TransformersEngine, pictures: list[NormalizedImage], monkeypatch: pytest.MonkeyPatch) -> None:
    _, ids = await plain_ids(engine, pictures[0])
    k = first_new_at(ids, 2)
    # A model whose EOS is a token it says early: the plain answer now stops there.
    monkeypatch.setattr(engine._model.generation_config, "eos_token_id", [ids[k]])
    eos_stop = await answer(engine, request(QUESTIONS[0], pictures[0], max_new_tokens=N))
    assert (eos_stop.finish_reason, eos_stop.usage.completion_tokens) == ("stop", k + 1)
    ignored = await answer(engine, request(QUESTIONS[0], pictures[0], max_new_tokens=N, ignore_eos=True))
    assert (ignored.finish_reason, ignored.usage.completion_tokens) == ("length", N)
    deltas = [d async for d in engine.stream(request(QUESTIONS[0], pictures[0], max_new_tokens=N,
                                                     ignore_eos=True))]
    assert ("".join(d.text for d in deltas), deltas[-1].usage) == (ignored.text, ignored.usage)
    held = await answer(engine, request(QUESTIONS[0], pictures[0], max_new_tokens=N, min_tokens=k + 3))
    assert held.usage.completion_tokens >= k + 3
    # ignore_eos leaves the client's own stop ids in force
    both = await answer(engine, request(QUESTIONS[0], pictures[0], max_new_tokens=N, ignore_eos=True,
                                        stop_token_ids=(ids[k],)))
    assert (both.finish_reason, both.usage.completion_tokens) == ("stop", k + 1)


async def test_min_tokens_ignores_a_stop_string_inside_the_first_tokens(
        engine: TransformersEngine, pictures: list[NormalizedImage]) -> None:
    full, ids = await plain_ids(engine, pictures[0])
    min_tokens = 4
    head = decode(engine, ids[:min_tokens])
    stop = next(c for c in head if c.strip() and c in full.text[len(head):])
    early = await answer(engine, request(QUESTIONS[0], pictures[0], max_new_tokens=N, stop=(stop,)))
    assert early.text == full.text[:full.text.index(stop)]
    late = await answer(engine, request(QUESTIONS[0], pictures[0], max_new_tokens=N, stop=(stop,),
                                        min_tokens=min_tokens))
    assert late.text == full.text[:full.text.index(stop, len(head))] != early.text
    assert late.finish_reason == "stop"


async def test_min_p_one_is_greedy_and_repetition_penalty_changes_a_loop(
        engine: TransformersEngine, pictures: list[NormalizedImage]) -> None:
    for question, image in zip(QUESTIONS, pictures, strict=True):
        greedy = await answer(engine, request(question, image, max_new_tokens=N))
        # min_p=1 keeps only the most likely token, so sampling cannot leave the greedy path
        top_only = await answer(engine, request(question, image, max_new_tokens=N, temperature=1.0,
                                                seed=1, min_p=1.0))
        assert top_only.text == greedy.text
        penalised = await answer(engine, request(question, image, max_new_tokens=N,
                                                 repetition_penalty=1.8))
        assert penalised.text != greedy.text  # the tiny model loops; a penalty breaks the loop


async def test_mixed_extensions_in_one_batch_equal_one_by_one(engine: TransformersEngine,
                                                              pictures: list[NormalizedImage]) -> None:
    _, ids = await plain_ids(engine, pictures[1])
    variants: list[dict[str, Any]] = [
        {}, {"repetition_penalty": 1.8}, {"stop_token_ids": (ids[3],)}, {"min_tokens": 5, "stop_token_ids": (ids[3],)},
        {"ignore_eos": True}, {"temperature": 1.0, "seed": 4, "min_p": 0.5}]
    batch = [request(QUESTIONS[i % 4], pictures[i % 4], max_new_tokens=N, **v) for i, v in enumerate(variants)]
    together = [ok(r) for r in await engine.generate(batch)]
    alone = [await answer(engine, request(QUESTIONS[i % 4], pictures[i % 4], max_new_tokens=N, **v))
             for i, v in enumerate(variants)]
    assert [(r.text, r.finish_reason, r.usage) for r in together] == \
           [(r.text, r.finish_reason, r.usage) for r in alone]

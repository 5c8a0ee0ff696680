"""The cache inside the pipeline (L1 only, scripted engine): what is stored, served and shared."""

from __future__ import annotations

import asyncio

import pytest

from cache_helpers import BlockWord, ask, image_bytes, make_pipeline
from tests.waiting import wait_until_async
from vqaserve.cache import LRUCache, TieredCache
from vqaserve.engines.scripted import ScriptedEngine
from vqaserve.errors import EngineFailure
from vqaserve.types import GenerationParams

pytestmark = pytest.mark.unit
PNG = image_bytes()


async def collect(pipeline, question):  # type: ignore[no-untyped-def]
    status, stream = await pipeline.open_stream(question)
    deltas = [d async for d in stream]
    return status, deltas


async def test_miss_then_hit_runs_the_model_once() -> None:
    engine = ScriptedEngine()
    p = make_pipeline(engine)
    first = await p.answer(ask("What color is it?", PNG))
    second = await p.answer(ask("What color is it?", PNG, kind="data"))
    assert (first.cache, second.cache) == ("miss", "hit")
    assert second.text == first.text and second.usage.to_dict() == first.usage.to_dict()
    assert engine.generations == 1
    assert second.request_id != first.request_id


async def test_other_question_model_or_params_miss() -> None:
    engine = ScriptedEngine(adapter_names=["sunglasses"])
    p = make_pipeline(engine)
    await p.answer(ask("What color is it?", PNG))
    for q in (ask("What pattern does it have?", PNG), ask("What color is it?", PNG, model="sunglasses"),
              ask("What color is it?", PNG, params=GenerationParams(max_new_tokens=9)),
              ask("What color is it?", image_bytes(size=(64, 96)))):
        assert (await p.answer(q)).cache == "miss"
    assert engine.generations == 5


async def test_non_deterministic_or_opted_out_requests_bypass() -> None:
    engine = ScriptedEngine()
    p = make_pipeline(engine)
    sampled = GenerationParams(temperature=0.7)
    assert (await p.answer(ask("q", PNG, params=sampled))).cache == "bypass"
    assert (await p.answer(ask("q", PNG, params=sampled))).cache == "bypass"
    opted_out = ask("q", PNG)
    opted_out.cache = False
    assert (await p.answer(opted_out)).cache == "bypass"
    seeded = GenerationParams(temperature=0.7, seed=3)
    assert (await p.answer(ask("q", PNG, params=seeded))).cache == "miss"
    assert (await p.answer(ask("q", PNG, params=seeded))).cache == "hit"
    assert engine.generations == 4


async def test_blocked_answers_are_not_stored() -> None:
    engine = ScriptedEngine()
    p = make_pipeline(engine, output_filter=BlockWord())
    for _ in range(2):
        a = await p.answer(ask("[[say:a forbidden word]]", PNG))
        assert a.finish_reason == "content_filter" and a.cache == "miss"
    assert engine.generations == 2


async def test_blocklist_or_model_change_stops_old_entries() -> None:
    cache = TieredCache(LRUCache(100))
    engine = ScriptedEngine()
    await make_pipeline(engine, cache, BlockWord("x1")).answer(ask("q", PNG))
    assert (await make_pipeline(engine, cache, BlockWord("x1")).answer(ask("q", PNG))).cache == "hit"
    assert (await make_pipeline(engine, cache, BlockWord("x2")).answer(ask("q", PNG))).cache == "miss"
    other_model = ScriptedEngine(model_id="scripted-v2")
    assert (await make_pipeline(other_model, cache, BlockWord("x2")).answer(ask("q", PNG))).cache == "miss"
    retrained = ScriptedEngine(fingerprint="weights-2")
    assert (await make_pipeline(retrained, cache, BlockWord("x2")).answer(ask("q", PNG))).cache == "miss"


async def test_errors_are_not_cached() -> None:
    engine = ScriptedEngine()
    p = make_pipeline(engine)
    for _ in range(2):
        with pytest.raises(EngineFailure):
            await p.answer(ask("[[raise]]", PNG))
    assert engine.generations == 2
    assert len(p.c.cache.l1) == 0  # type: ignore[union-attr]


async def test_twenty_concurrent_identical_requests_generate_once() -> None:
    engine = ScriptedEngine(delay_s=0.5)
    p = make_pipeline(engine)
    answers = await asyncio.gather(*(p.answer(ask("What color is it?", PNG)) for _ in range(20)))
    assert engine.generations == 1
    assert len({a.text for a in answers}) == 1
    assert len({a.request_id for a in answers}) == 20
    assert p.c.cache.stats()["coalesced"] == 19  # type: ignore[union-attr]


async def test_a_disconnecting_leader_does_not_cancel_the_others() -> None:
    engine = ScriptedEngine()
    p = make_pipeline(engine)
    leader = asyncio.create_task(p.answer(ask("[[sleep:1.5]] q", PNG)))
    await wait_until_async(lambda: engine.generations == 1)
    follower = asyncio.create_task(p.answer(ask("[[sleep:1.5]] q", PNG)))
    await wait_until_async(lambda: p.c.cache.coalesced == 1)  # type: ignore[union-attr]
    leader.cancel()
    answer = await follower
    assert "answer to" in answer.text and engine.generations == 1 and not engine.stopped


async def test_a_coalesced_error_is_shared_only_with_its_attempt() -> None:
    engine = ScriptedEngine(delay_s=0.5)
    p = make_pipeline(engine)
    results = await asyncio.gather(*(p.answer(ask("[[raise]]", PNG)) for _ in range(5)),
                                   return_exceptions=True)
    assert all(isinstance(r, EngineFailure) for r in results) and engine.generations == 1
    with pytest.raises(EngineFailure):
        await p.answer(ask("[[raise]]", PNG))
    assert engine.generations == 2


async def test_finished_stream_is_stored_and_a_hit_replays_as_a_stream() -> None:
    engine = ScriptedEngine()
    p = make_pipeline(engine)
    status, fresh = await collect(p, ask("What color is it?", PNG, stream=True))
    assert status == "miss"
    status, replay = await collect(p, ask("What color is it?", PNG, stream=True))
    assert status == "hit" and engine.generations == 1
    assert "".join(d.text for d in replay) == "".join(d.text for d in fresh)
    assert len(replay) > 1 and replay[-1].finish_reason == "stop" and replay[-1].usage is not None
    assert (await p.answer(ask("What color is it?", PNG))).cache == "hit"


async def test_an_abandoned_stream_is_not_stored() -> None:
    engine = ScriptedEngine(token_delay_s=0.01)
    p = make_pipeline(engine)
    status, stream = await p.open_stream(ask("one two three four five", PNG, stream=True))
    async for _ in stream:
        break  # the client goes away after the first piece
    await stream.aclose()  # type: ignore[attr-defined]
    assert len(p.c.cache.l1) == 0  # type: ignore[union-attr]
    assert (await p.answer(ask("one two three four five", PNG))).cache == "miss"


async def test_a_blocked_stream_is_not_stored() -> None:
    engine = ScriptedEngine()
    p = make_pipeline(engine, output_filter=BlockWord())
    _, deltas = await collect(p, ask("[[say:a forbidden word here]]", PNG, stream=True))
    assert deltas[-1].finish_reason == "content_filter"
    assert len(p.c.cache.l1) == 0  # type: ignore[union-attr]


async def test_a_stream_joining_an_identical_generation_replays_its_answer() -> None:
    engine = ScriptedEngine(delay_s=1.0)
    p = make_pipeline(engine)
    plain = asyncio.create_task(p.answer(ask("q", PNG)))
    await wait_until_async(lambda: engine.generations == 1)
    status, deltas = await collect(p, ask("q", PNG, stream=True))
    assert status == "miss" and engine.generations == 1
    assert "".join(d.text for d in deltas) == (await plain).text


async def test_requests_joining_a_generating_stream_get_its_answer() -> None:
    """One coalescing rule: while a stream generates, identical requests (streamed or not) wait for
    its answer instead of generating again, even if the stream's own client leaves."""
    engine = ScriptedEngine(token_delay_s=0.05)
    p = make_pipeline(engine)
    _, leader = await p.open_stream(ask("one two three four five six", PNG, stream=True))
    first = await leader.__anext__()
    plain = asyncio.create_task(p.answer(ask("one two three four five six", PNG)))
    status, follower = await p.open_stream(ask("one two three four five six", PNG, stream=True))
    await leader.aclose()  # type: ignore[attr-defined]  # the leader's client goes away
    followed = "".join([d.text async for d in follower])
    answer = await plain
    assert status == "miss" and engine.generations == 1 and first.text
    assert answer.text == followed == "answer to: one two three four five six (1 image)"
    assert answer.cache == "miss" and (await p.answer(ask("one two three four five six", PNG))).cache == "hit"

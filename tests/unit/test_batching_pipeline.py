"""The batcher behind the real Pipeline (wiring.build_pipeline) with the ScriptedEngine."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import image_bytes
from vqaserve.engines.scripted import ScriptedEngine
from vqaserve.scheduling.batching import MicroBatcher
from vqaserve.settings import load_settings
from vqaserve.types import ImageRef, Part, Question, Turn
from vqaserve.wiring import build_pipeline

pytestmark = pytest.mark.unit


def question(text: str, color: tuple[int, int, int] = (200, 30, 30)) -> Question:
    ref = ImageRef(kind="bytes", payload=image_bytes(color=color), name="image")
    # cache=False: an answer cached by one pass must not hide the engine from the next
    return Question(turns=[Turn(role="user", parts=[Part(image_ref=ref), Part(text=text)])], cache=False)


async def test_concurrent_answers_equal_sequential_ones_and_are_batched() -> None:
    settings = load_settings(batch_max_size=8, batch_max_wait_ms=50, safety_image="off")
    engine = ScriptedEngine()
    pipeline = build_pipeline(settings, engine)
    assert isinstance(pipeline.c.batcher, MicroBatcher)
    texts = [f"what colour is item {i}?" for i in range(8)]
    sequential = [(await pipeline.answer(question(t))).text for t in texts]
    concurrent = await asyncio.gather(*(pipeline.answer(question(t)) for t in texts))
    assert [a.text for a in concurrent] == sequential
    assert max(len(b) for b in engine.batches) > 1


async def test_batch_size_one_means_batching_off() -> None:
    engine = ScriptedEngine()
    pipeline = build_pipeline(load_settings(batch_max_size=1, safety_image="off"), engine)
    await asyncio.gather(*(pipeline.answer(question(f"q{i}")) for i in range(4)))
    assert [len(b) for b in engine.batches] == [1, 1, 1, 1]


async def test_pipeline_stream_goes_through_the_batcher() -> None:
    engine = ScriptedEngine()
    pipeline = build_pipeline(load_settings(safety_image="off"), engine)
    status, deltas = await pipeline.open_stream(question("stream it"))
    text = "".join([d.text async for d in deltas])
    assert status in ("miss", "bypass")
    assert text == "answer to: stream it (1 image)"
    assert pipeline.c.batcher is not None and pipeline.c.batcher.stats.batches == 1  # type: ignore[attr-defined]

"""The pipeline with the scripted engine: model resolution, limits, budget, deadlines, streaming."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import image_bytes
from tests.pipelines import wired_pipeline
from tests.waiting import wait_until_async
from vqaserve.engines.scripted import ScriptedEngine
from vqaserve.errors import DeadlineExceeded, EngineFailure, InvalidRequest, NotFound
from vqaserve.images.budget import PixelBudget
from vqaserve.pipeline import Pipeline
from vqaserve.settings import Settings
from vqaserve.types import GenerationParams, ImageRef, Part, Question, Turn

pytestmark = pytest.mark.unit


def question(text: str, n_images: int = 1, **kw: object) -> Question:
    parts = [Part(image_ref=ImageRef("bytes", image_bytes((200, 120)), name=f"image{i}"))
             for i in range(n_images)]
    return Question(turns=[Turn("user", [*parts, Part(text=text)])], **kw)  # type: ignore[arg-type]


def make(engine: ScriptedEngine | None = None, **settings: object) -> Pipeline:
    """Production's pipeline (micro-batcher, safety with the image check off) on the scripted engine,
    with the answer cache off (VQA_CACHE__ENABLED=false): every answer here is generated
    (the cache's own tests: test_cache_pipeline.py)."""
    return wired_pipeline(engine or ScriptedEngine(adapter_names=["sunglasses"]),
                          Settings(**{"safety_image": "off", "cache": {"enabled": False}, **settings}))


async def test_answer_goes_through_images_and_engine() -> None:
    p = make()
    a = await p.answer(question("What color is it?"))
    assert a.text == "answer to: What color is it? (1 image)"
    assert a.cache == "bypass" and a.model == "scripted"
    assert {"decode", "generate"} <= set(a.timings)


async def test_adapter_by_model_name_and_unknown_model() -> None:
    p = make()
    a = await p.answer(question("hi", model="sunglasses"))
    assert a.text.startswith("[sunglasses]")
    with pytest.raises(NotFound) as info:
        await p.answer(question("hi", model="nope"))
    assert info.value.status == 404 and info.value.param == "model"


async def test_too_many_images_refused_before_decoding() -> None:
    p = make(max_images=2)
    with pytest.raises(InvalidRequest, match="too many images"):
        await p.answer(question("hi", n_images=3))


async def test_budget_intersects_model_budget() -> None:
    engine = ScriptedEngine(pixel_budget=PixelBudget(16 * 1024, 64 * 1024))
    p = make(engine)
    assert p.budget() == PixelBudget(64 * 1024, 64 * 1024)
    a_q = question("hi")
    await p.answer(a_q)
    (img,) = a_q.images
    assert img.width * img.height <= 64 * 1024


async def test_engine_failure_of_one_request_is_its_own() -> None:
    p = make()
    with pytest.raises(EngineFailure) as info:
        await p.answer(question("[[raise]]"))
    assert info.value.status == 503
    assert (await p.answer(question("fine"))).text.startswith("answer to: fine")


async def test_deadline_stops_generation() -> None:
    engine = ScriptedEngine()
    p = make(engine)
    q = question("[[sleep:5]]")
    q.deadline = asyncio.get_running_loop().time() + 0.2
    with pytest.raises(DeadlineExceeded):
        await p.answer(q)
    await wait_until_async(lambda: q.request_id in engine.stopped, what="the engine told to stop")


async def test_stream_yields_words_and_final_usage() -> None:
    p = make()
    status, chunks = await p.open_stream(question("say it", params=GenerationParams()))
    deltas = [d async for d in chunks]
    assert status == "bypass"
    assert "".join(d.text for d in deltas) == "answer to: say it (1 image)"
    assert deltas[-1].finish_reason == "stop" and deltas[-1].usage is not None

"""The micro-batcher in front of a real Qwen3-VL engine: concurrent answers equal sequential ones.

Runs on the tiny random model and on the bundled shop-toy model.
"""

from __future__ import annotations

import asyncio

import pytest

from vqaserve.bench.workload import catalogue_items
from vqaserve.engines.transformers import TransformersEngine
from vqaserve.settings import resolve_model_path
from vqaserve.types import GenerationParams, ImageRef, Part, Question, Turn
from vqaserve.wiring import build_pipeline

pytestmark = pytest.mark.integration


def _question(data: bytes, text: str) -> Question:
    ref = ImageRef(kind="bytes", payload=data, name="image")
    # cache=False: the sequential pass must not answer the concurrent one from the cache
    return Question(turns=[Turn(role="user", parts=[Part(image_ref=ref), Part(text=text)])],
                    params=GenerationParams(max_new_tokens=8), cache=False)


@pytest.fixture(params=["tiny", "shop-toy"])
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "tiny":
        return str(request.getfixturevalue("tiny_model_dir"))
    return resolve_model_path("shop-toy")


async def test_eight_concurrent_requests_answer_like_eight_sequential(model_dir: str) -> None:
    from vqaserve.settings import load_settings

    settings = load_settings(model=model_dir, safety_image="off", batch_max_size=8, batch_max_wait_ms=200)
    engine = TransformersEngine(settings)
    await engine.start()
    try:
        pipeline = build_pipeline(settings, engine)
        items = catalogue_items(8, seed=5)
        sequential = [(await pipeline.answer(_question(i.data, i.question))).text for i in items]
        concurrent = await asyncio.gather(*(pipeline.answer(_question(i.data, i.question)) for i in items))
        assert [a.text for a in concurrent] == sequential
        sizes = pipeline.c.batcher.stats.sizes  # type: ignore[union-attr]
        assert sizes[:8] == [1] * 8 and max(sizes[8:]) > 1  # the concurrent pass really was batched
    finally:
        await engine.close()

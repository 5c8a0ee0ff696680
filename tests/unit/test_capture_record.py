"""`record_for` builds a capture record from what the pipeline answered, and the writer stores the
picture exactly as the model saw it (the normalized pixels), not the client's file."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from tests.cache_helpers import make_pipeline
from tests.conftest import image_bytes
from vqaserve.capture import CaptureWriter, open_store, record_for
from vqaserve.engines.scripted import ScriptedEngine
from vqaserve.types import GenerationParams, ImageRef, Part, Question, Turn

pytestmark = pytest.mark.unit


async def test_a_record_of_an_answer_keeps_the_picture_the_model_saw(tmp_path: Path) -> None:
    pipeline = make_pipeline(ScriptedEngine(model_id="shop-toy", adapter_names=["v2"]))
    sent = image_bytes((1200, 900), fmt="JPEG", quality=80)  # larger than the budget: scaled down
    question = Question(turns=[Turn(role="user", parts=[Part(image_ref=ImageRef(kind="bytes", payload=sent)),
                                                         Part(text="What is it?")])],
                        params=GenerationParams(max_new_tokens=8), model="v2")
    answer = await pipeline.answer(question)
    record = record_for(question, answer, response_id="chatcmpl-abc", model=pipeline.model_id, latency_ms=12.0,
                        key_name="web", confidence=0.4, adapter_fingerprint="f00d")
    seen = question.images[0]
    assert (record.id, record.model, record.adapter, record.answer) == ("chatcmpl-abc", "shop-toy", "v2", answer.text)
    assert record.turns == ({"role": "user", "text": "What is it?", "images": 1},)
    assert record.image_hashes == (seen.content_hash,) and record.pictures[0].image is seen.image
    assert (record.cache, record.key_name, record.confidence) == (answer.cache, "web", 0.4)

    url = f"sqlite:///{tmp_path / 'c.db'}"
    writer = CaptureWriter(open_store(url))
    await writer.start()
    assert writer.submit(record)
    await writer.close()
    store = open_store(url)
    png = await store.picture(seen.content_hash)
    await store.close()
    assert png is not None and png.startswith(b"\x89PNG")
    kept = Image.open(io.BytesIO(png))
    assert kept.size == (seen.width, seen.height) != (1200, 900)
    assert kept.convert("RGB").tobytes() == seen.image.tobytes()

"""Helpers for tests on the tiny random Qwen3-VL (see conftest.py's `tiny_model_dir`)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from vqaserve.engines.transformers import TransformersEngine
from vqaserve.errors import VQAError
from vqaserve.images import decode as imgs
from vqaserve.settings import load_settings
from vqaserve.types import EngineRequest, EngineResult, GenerationParams, NormalizedImage, Part, Turn

# The tiny model's processor budget: 4..64 visual tokens per image keeps the vision tower cheap.
TINY_MIN_PIXELS = 4 * 32 * 32
TINY_MAX_PIXELS = 64 * 32 * 32

QUESTIONS = ["What color is it?", "这是什么颜色？", "Describe this product.", "How many items are there?"]
SIZES = [(64, 96), (320, 192), (128, 128), (90, 40)]
COLOURS = [(200, 20, 20), (20, 180, 40), (30, 30, 200), (240, 240, 240)]


def picture_bytes(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    img = Image.new("RGB", size, colour)
    for x in range(0, size[0], 8):  # some structure, so the vision tower sees more than a flat fill
        img.putpixel((x, x % size[1]), (255 - colour[0], 255 - colour[1], 255 - colour[2]))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def picture(size: tuple[int, int], colour: tuple[int, int, int]) -> NormalizedImage:
    """A picture already fitted to the tiny budget, as the pipeline hands it to an engine."""
    return imgs.normalize(picture_bytes(size, colour), TINY_MIN_PIXELS, TINY_MAX_PIXELS, 10**8, "image")


def request(question: str, image: NormalizedImage | None = None, rid: str = "",
            adapter: str | None = None, **params: Any) -> EngineRequest:
    parts = ([Part(image=image)] if image is not None else []) + [Part(text=question)]
    params.setdefault("max_new_tokens", 10)
    return EngineRequest(turns=[Turn(role="user", parts=parts)], params=GenerationParams(**params),
                         adapter=adapter, request_id=rid or question)


def ok(result: EngineResult | VQAError) -> EngineResult:
    assert isinstance(result, EngineResult), result
    return result


def started_engine(model_dir: Path) -> Iterator[TransformersEngine]:
    """The in-process engine on `model_dir`, started; closed when the generator is (a fixture body)."""
    eng = TransformersEngine(load_settings(model=str(model_dir)))
    asyncio.run(eng.start())
    yield eng
    asyncio.run(eng.close())


def four_pictures() -> list[NormalizedImage]:
    """One picture per SIZES/COLOURS pair: four shapes, so batched rows differ in visual tokens."""
    return [picture(s, c) for s, c in zip(SIZES, COLOURS, strict=True)]

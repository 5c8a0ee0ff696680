"""Benchmark inputs: catalogue pictures (vqaserve.train.synthetic), photo-sized JPEGs, request bodies.

Every picture is a pure function of (seed, index), so the HTTP run and the in-process run see the
same pixels and questions.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass

from PIL import Image

from vqaserve.images.decode import data_uri


@dataclass(frozen=True)
class Item:
    """One benchmark request: encoded picture bytes, its MIME type and the question."""

    data: bytes
    mime: str
    question: str
    key: str  # identifies picture + question (for cache replays)


def catalogue_picture(seed: int, index: int) -> tuple[Image.Image, str]:
    """A shop-catalogue picture and a question about it (the renderer lives in train.synthetic)."""
    from vqaserve.train.synthetic import make_sample

    sample = make_sample("test", seed, index)
    return sample.image.convert("RGB"), sample.question


def encode(image: Image.Image, fmt: str = "PNG", **save: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    return buf.getvalue()


def catalogue_items(n: int, seed: int = 0, start: int = 0) -> list[Item]:
    """n distinct pictures (PNG, as the catalogue stores them) with their questions."""
    items = []
    for index in range(start, start + n):
        image, question = catalogue_picture(seed, index)
        items.append(Item(data=encode(image), mime="image/png", question=question,
                          key=f"{seed}:{index}"))
    return items


def photo_pair(seed: int, index: int, size: tuple[int, int] = (4000, 3000),
               small: tuple[int, int] = (1280, 960)) -> tuple[Item, Item]:
    """The same catalogue picture as a 12 MP camera-like JPEG and pre-scaled to 1280x960.

    Sensor-like noise is added before encoding so the JPEG has a photo's entropy (and size), not
    the few hundred KB of a flat upscaled drawing.
    """
    import numpy as np

    image, question = catalogue_picture(seed, index)
    big = image.resize(size, Image.Resampling.BICUBIC)
    rng = np.random.default_rng(seed * 7919 + index)
    noisy = np.asarray(big, dtype=np.int16) + rng.integers(-12, 13, size=(size[1], size[0], 3),
                                                           dtype=np.int16)
    big = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")
    large = Item(data=encode(big, "JPEG", quality=90), mime="image/jpeg", question=question,
                 key=f"photo-12mp:{seed}:{index}")
    scaled = Item(data=encode(big.resize(small, Image.Resampling.LANCZOS), "JPEG", quality=90),
                  mime="image/jpeg", question=question, key=f"photo-1280:{seed}:{index}")
    return large, scaled


def chat_request(data: bytes, mime: str, question: str, model: str | None, max_tokens: int,
                 **extra: object) -> dict[str, object]:
    """An OpenAI chat.completions request: one picture as a data: URI, then the question; greedy.
    `extra` adds fields (`stream`, `cache`, `response_format`, ...)."""
    body: dict[str, object] = {
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_uri(data, mime)}},
            {"type": "text", "text": question}]}],
        "max_tokens": max_tokens, "temperature": 0, **extra}
    if model:
        body["model"] = model
    return body


def chat_body(item: Item, model: str | None, max_tokens: int, **extra: object) -> bytes:
    """`chat_request` for a benchmark item, encoded once before timing."""
    return json.dumps(chat_request(item.data, item.mime, item.question, model, max_tokens, **extra)).encode()


def replay_sequence(n: int, repeat: float, seed: int) -> list[int]:
    """Indices of a replay workload: with probability `repeat` a request repeats an earlier one."""
    rng = random.Random(seed)
    out: list[int] = []
    fresh = 0
    for _ in range(n):
        if out and rng.random() < repeat:
            out.append(rng.choice(out))
        else:
            out.append(fresh)
            fresh += 1
    return out

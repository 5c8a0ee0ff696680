"""Benchmark inputs: catalogue pictures (vqaserve.train.synthetic), photo-sized JPEGs, request bodies.

Every picture is a pure function of (seed, index), so the HTTP run and the in-process run see the
same pixels and questions.
"""

from __future__ import annotations

import base64
import io
import json
import random
from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class Item:
    """One benchmark request: encoded picture bytes, its MIME type and the question."""

    data: bytes
    mime: str
    question: str
    key: str  # identifies picture + question (for cache replays)


def catalogue_picture(seed: int, index: int) -> tuple[Image.Image, str]:
    """A shop-catalogue picture and a question about it (the renderer lives in train.synthetic)."""
    try:
        from vqaserve.train.synthetic import make_sample
    except ImportError:  # pragma: no cover - only before the renderer was merged
        return _fallback_picture(seed, index)
    sample = make_sample("test", seed, index)
    return sample.image.convert("RGB"), sample.question


def _fallback_picture(seed: int, index: int) -> tuple[Image.Image, str]:
    rng = random.Random(seed * 1_000_003 + index)
    img = Image.new("RGB", (rng.randint(160, 640), rng.randint(160, 640)),
                    tuple(rng.randint(0, 255) for _ in range(3)))
    return img, "What color is it?"


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


def chat_body(item: Item, model: str | None, max_tokens: int) -> bytes:
    """An OpenAI chat.completions request (data: URI image + text), encoded once before timing."""
    uri = f"data:{item.mime};base64,{base64.b64encode(item.data).decode()}"
    body: dict[str, object] = {
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": uri}},
            {"type": "text", "text": item.question}]}],
        "max_tokens": max_tokens, "temperature": 0}
    if model:
        body["model"] = model
    return json.dumps(body).encode()


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

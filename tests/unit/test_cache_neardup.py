"""Near-duplicate index: re-encoded copies share a canonical hash, other products never do."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image, ImageDraw

from cache_helpers import ask, make_pipeline
from vqaserve.cache import CacheKeyBuilder
from vqaserve.cache.neardup import NearDuplicateIndex, envelope_distance, phash, thumbnail
from vqaserve.engines.scripted import ScriptedEngine
from vqaserve.images import decode as imgs
from vqaserve.types import NormalizedImage

pytestmark = pytest.mark.unit
LO, HI = 32 * 32 * 16, 32 * 32 * 256


def picture(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    rng = random.Random(seed)
    img = Image.new("RGB", size, (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x, y = rng.randrange(size[0] - 60), rng.randrange(size[1] - 60)
        d.ellipse((x, y, x + rng.randint(20, 60), y + rng.randint(20, 60)),
                  fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    return img


def save(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)  # type: ignore[arg-type]
    return buf.getvalue()


def norm(data: bytes) -> NormalizedImage:
    return imgs.normalize(data, LO, HI, 10**8)


def test_reencoded_and_resized_copies_map_to_the_original() -> None:
    index = NearDuplicateIndex(100)
    original = picture(1)
    canon = index.canonical(norm(save(original)))
    copies = [save(original, "JPEG", quality=60), save(original, "WEBP", quality=80),
              save(original.resize((240, 180), Image.Resampling.LANCZOS), "PNG"),
              save(original.resize((480, 360), Image.Resampling.LANCZOS), "JPEG", quality=90)]
    assert [index.canonical(norm(c)) for c in copies] == [canon] * 4
    assert index.near_hits == 4 and len(index) == 1  # copies never become anchors


def test_other_pictures_and_small_changes_do_not_match() -> None:
    index = NearDuplicateIndex(100)
    original = picture(2)
    canon = index.canonical(norm(save(original)))
    labelled = original.copy()
    ImageDraw.Draw(labelled).rectangle((150, 100, 165, 115), fill=(255, 255, 255))  # a 5% label
    r, g, b = original.split()
    others = [picture(3), labelled, Image.merge("RGB", (b, g, r)), original.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
              original.crop((0, 0, 240, 240))]
    for other in others:
        assert index.canonical(norm(save(other, "JPEG", quality=90))) != canon


def test_thumbnail_envelope_tolerates_blur_but_not_new_content() -> None:
    base = picture(4)
    blurred = base.resize((160, 120)).resize((320, 240))
    marked = base.copy()
    ImageDraw.Draw(marked).rectangle((100, 100, 130, 130), fill=(0, 0, 0))
    assert envelope_distance(thumbnail(base), thumbnail(blurred)) < 40
    assert envelope_distance(thumbnail(base), thumbnail(marked)) > 60
    assert bin(phash(base) ^ phash(blurred)).count("1") <= 6


def test_the_index_is_bounded() -> None:
    index = NearDuplicateIndex(max_images=5)
    for seed in range(20):
        index.canonical(norm(save(picture(seed))))
    assert len(index) == 5


async def test_a_reencoded_photo_hits_through_the_pipeline_when_enabled() -> None:
    engine = ScriptedEngine()
    original = picture(5)
    jpeg = save(original, "JPEG", quality=70)
    p = make_pipeline(engine, key_builder=CacheKeyBuilder(NearDuplicateIndex(100)))
    assert (await p.answer(ask("What color is it?", save(original)))).cache == "miss"
    assert (await p.answer(ask("What color is it?", jpeg))).cache == "hit"
    plain = make_pipeline(ScriptedEngine())  # off by default: only exact pixels hit
    await plain.answer(ask("What color is it?", save(original)))
    assert (await plain.answer(ask("What color is it?", jpeg))).cache == "miss"

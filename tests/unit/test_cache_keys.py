"""Case 28: the key changes with everything that can change an answer, and only with that."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from cache_helpers import image_bytes
from vqaserve.cache.keys import CacheKeyBuilder
from vqaserve.images import decode as imgs
from vqaserve.images.decode import data_uri
from vqaserve.types import GenerationParams, NormalizedImage, Part, Question, Turn

pytestmark = pytest.mark.unit
LO, HI = 32 * 32 * 4, 32 * 32 * 64


def norm(data: bytes) -> NormalizedImage:
    return imgs.normalize(data, LO, HI, 10_000_000)


def question(image: NormalizedImage, text: str = "What color is it?", **kw: object) -> Question:
    params = kw.pop("params", GenerationParams())
    turns = kw.pop("turns", None) or [Turn("user", [Part(image=image), Part(text=text)])]
    return Question(turns=turns, params=params, **kw)  # type: ignore[arg-type]


def key(q: Question, model: str = "m", policy: str = "p1") -> str:
    return CacheKeyBuilder()(q, model, policy)


def test_same_photo_in_other_lossless_containers_has_the_same_key() -> None:
    png = image_bytes(fmt="PNG")
    pixels = Image.open(io.BytesIO(png))
    webp, bmp = io.BytesIO(), io.BytesIO()
    pixels.save(webp, format="WEBP", lossless=True)
    pixels.save(bmp, format="BMP")
    from_uri = imgs.decode_data_uri(data_uri(png), "image", 10**7)
    keys = {key(question(norm(b))) for b in (png, webp.getvalue(), bmp.getvalue(), from_uri)}
    assert len(keys) == 1


def test_same_pixel_bytes_in_another_shape_gets_another_key() -> None:
    a = Image.new("RGB", (128, 64))
    a.putdata([((i * 7) % 256, (i * 13) % 256, (i * 3) % 256) for i in range(128 * 64)])
    b = Image.frombytes("RGB", (64, 128), a.tobytes())  # same bytes, other width and height
    buf_a, buf_b = io.BytesIO(), io.BytesIO()
    a.save(buf_a, "PNG")
    b.save(buf_b, "PNG")
    assert key(question(norm(buf_a.getvalue()))) != key(question(norm(buf_b.getvalue())))


def test_every_answer_changing_input_changes_the_key() -> None:
    img = norm(image_bytes())
    other_img = norm(image_bytes(color=(30, 200, 30)))
    base = question(img)
    ask = Part(text="What color is it?")
    variants = {
        "question": question(img, "What pattern does it have?"),
        "image": question(other_img),
        "adapter": question(img, adapter="sunglasses"),
        "max_tokens": question(img, params=GenerationParams(max_new_tokens=65)),
        "seed": question(img, params=GenerationParams(temperature=0.7, seed=2)),
        "temperature": question(img, params=GenerationParams(temperature=0.7, seed=1)),
        "top_p": question(img, params=GenerationParams(top_p=0.8)),
        "top_k": question(img, params=GenerationParams(top_k=20)),
        "stop": question(img, params=GenerationParams(stop=("\n",))),
        "prior turn": question(img, turns=[Turn("user", [Part(text="hi")]),
                                           Turn("assistant", [Part(text="hello")]),
                                           Turn("user", [Part(image=img), ask])]),
        "role": question(img, turns=[Turn("system", [Part(image=img), ask])]),
        "image position": question(img, turns=[Turn("user", [ask, Part(image=img)])]),
    }
    seen = {key(base): "base"}
    for name, q in variants.items():
        k = key(q)
        assert k not in seen, f"{name} collides with {seen[k]}"
        seen[k] = name
    assert key(base, model="other") != key(base)
    assert key(base, policy="p2") != key(base)
    sampled = question(img, params=GenerationParams(temperature=0.7, seed=1))
    assert key(sampled) != key(question(img, params=GenerationParams(temperature=0.7, seed=3)))


def test_text_boundaries_cannot_collide() -> None:
    img = norm(image_bytes())
    one = question(img, turns=[Turn("user", [Part(text="ab"), Part(text="c")])])
    two = question(img, turns=[Turn("user", [Part(text="a"), Part(text="bc")])])
    assert key(one) != key(two)
    assert key(one) == key(question(img, turns=[Turn("user", [Part(text="ab"), Part(text="c")])]))


def test_unresolved_image_refs_are_refused() -> None:
    from vqaserve.types import ImageRef

    q = Question(turns=[Turn("user", [Part(image_ref=ImageRef("url", "http://x/a.png"))])])
    with pytest.raises(ValueError, match="normalized"):
        key(q)

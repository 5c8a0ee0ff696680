"""The image stage's decoded-picture memo: the same input + budget -> the same NormalizedImage, decoded once."""

from __future__ import annotations

from pathlib import Path

import pytest

import vqaserve.images.loading as image_loading
from tests.conftest import image_bytes
from tests.pipelines import wired_pipeline
from vqaserve.errors import InvalidImage
from vqaserve.images.decode import data_uri, normalize
from vqaserve.images.loading import DecodedImageMemo
from vqaserve.types import ImageRef, Part, Question, Turn

BUDGET = (64 * 64, 256 * 256, 64_000_000)


@pytest.mark.unit
def test_same_bytes_decode_once_and_equal_a_fresh_decode() -> None:
    memo = DecodedImageMemo(entries=8)
    data = image_bytes((300, 200))
    first = memo.normalize(data, *BUDGET, "messages[0].content[0]")
    again = memo.normalize(data, *BUDGET, "image")
    fresh = normalize(data, *BUDGET, "image")
    assert (memo.hits, memo.misses) == (1, 1)
    assert again.content_hash == first.content_hash == fresh.content_hash
    assert (again.width, again.height, again.original_size) == (fresh.width, fresh.height, fresh.original_size)
    assert again.source == "image" and first.source == "messages[0].content[0]"  # each request's own name


@pytest.mark.unit
def test_a_different_budget_or_different_bytes_decode_again() -> None:
    memo = DecodedImageMemo(entries=8)
    data = image_bytes((300, 200))
    small = memo.normalize(data, 32 * 32, 64 * 64, 64_000_000)
    large = memo.normalize(data, *BUDGET)
    other = memo.normalize(image_bytes((300, 200), color=(10, 200, 10)), *BUDGET)
    assert memo.hits == 0 and len(memo) == 3
    assert small.width * small.height < large.width * large.height
    assert other.content_hash != large.content_hash


@pytest.mark.unit
def test_bounded_by_entries_and_by_pixels_and_can_be_off() -> None:
    memo = DecodedImageMemo(entries=2)
    for color in [(1, 1, 1), (2, 2, 2), (3, 3, 3)]:
        memo.normalize(image_bytes(color=color), *BUDGET)
    assert len(memo) == 2
    tight = DecodedImageMemo(entries=100, max_bytes=100 * 100 * 3)
    for color in [(1, 1, 1), (2, 2, 2)]:
        tight.normalize(image_bytes((96, 64), color=color), *BUDGET)  # each 96x64 -> >= 64x64
    assert len(tight) == 1
    off = DecodedImageMemo(entries=0)
    data = image_bytes()
    off.normalize(data, *BUDGET)
    off.normalize(data, *BUDGET)
    assert len(off) == 0 and off.hits == 0


@pytest.mark.unit
def test_bad_bytes_raise_every_time_and_are_not_remembered() -> None:
    memo = DecodedImageMemo(entries=8)
    for _ in range(2):
        with pytest.raises(InvalidImage, match="upload"):
            memo.normalize(b"\x89PNG\r\n\x1a\n garbage", *BUDGET, "upload")
    assert len(memo) == 0


def _question(ref: ImageRef) -> Question:
    return Question(turns=[Turn("user", [Part(image_ref=ref), Part(text="What color is it?")])])


@pytest.mark.unit
async def test_the_pipeline_decodes_a_resent_photo_once_whatever_its_size(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    decoded: list[str] = []
    real = image_loading.imgs.normalize

    def counting(data: bytes, *args: object) -> object:
        decoded.append(str(args[-1]))
        return real(data, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(image_loading.imgs, "normalize", counting)
    monkeypatch.setattr(image_loading, "HASH_ON_LOOP_BYTES", 1000)  # the small picture: the large path
    small = image_bytes((300, 200))
    large = image_bytes((900, 700), fmt="BMP")  # > 1000 bytes and > the small one
    p = wired_pipeline()
    uri = data_uri(small)
    hashes = []
    for ref in [ImageRef("bytes", small), ImageRef("bytes", small), ImageRef("data", uri),
                ImageRef("data", uri), ImageRef("bytes", large), ImageRef("bytes", large)]:
        q = _question(ref)
        await p.answer(q)
        hashes.append(q.images[0].content_hash)
    assert len(decoded) == 3  # one decode per distinct input, the repeats come from the memo
    assert hashes[0] == hashes[1] == hashes[2] == hashes[3] != hashes[4] == hashes[5]
    assert len(p.pictures.memo) == 3
    # a local path is decoded every time: the file behind the name may have changed
    path = tmp_path / "photo.png"
    path.write_bytes(small)
    for _ in range(2):
        await p.answer(_question(ImageRef("path", str(path))))
    assert len(decoded) == 5 and len(p.pictures.memo) == 3

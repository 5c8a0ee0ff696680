"""The decoded-picture memo: same bytes + same budget -> the same NormalizedImage, without decoding."""

from __future__ import annotations

import pytest

from tests.conftest import image_bytes
from vqaserve.errors import InvalidImage
from vqaserve.image_memo import DecodedImageMemo
from vqaserve.images import normalize

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

"""L1 bounds and copies; the JSON codec refuses anything it does not fully recognise (case 29)."""

from __future__ import annotations

import json
import pickle

import pytest

from vqaserve.cache import codec
from vqaserve.cache.keys import CACHE_SCHEMA_VERSION
from vqaserve.cache.lru import LRUCache
from vqaserve.types import Answer, Usage

pytestmark = pytest.mark.unit


def answer(text: str = "red") -> Answer:
    return Answer(text=text, model="m", usage=Usage(5, 1))


def test_codec_round_trip_keeps_text_and_usage() -> None:
    raw = codec.encode("k1", answer("红色 and more"))
    got = codec.decode("k1", raw)
    assert got is not None
    assert (got.text, got.model, got.finish_reason, got.usage.to_dict()) == \
        ("红色 and more", "m", "stop", Usage(5, 1).to_dict())


@pytest.mark.parametrize("raw", [
    b"\x00\xff garbage", b"", b"null", b"[1,2]", b'{"text": "red"}',
    pickle.dumps({"text": "red"}),
    json.dumps({"v": "vqa-answer", "schema": CACHE_SCHEMA_VERSION - 1, "key": "k1", "text": "old",
                "model": "m", "finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": 1}).encode(),
    json.dumps({"v": "vqa-answer", "schema": CACHE_SCHEMA_VERSION, "key": "k1", "text": 3,
                "model": "m", "finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": 1}).encode(),
    json.dumps({"v": "vqa-answer", "schema": CACHE_SCHEMA_VERSION, "key": "k1", "text": "x",
                "model": "m", "finish_reason": "content_filter", "prompt_tokens": 1,
                "completion_tokens": 1}).encode(),
    json.dumps({"v": "vqa-answer", "schema": CACHE_SCHEMA_VERSION, "key": "k1", "text": "x",
                "model": "m", "finish_reason": "stop", "prompt_tokens": -1, "completion_tokens": 1}).encode(),
])
def test_corrupt_foreign_or_old_values_are_misses(raw: bytes) -> None:
    assert codec.decode("k1", raw) is None


def test_a_value_stored_under_another_key_is_never_served() -> None:
    assert codec.decode("k2", codec.encode("k1", answer())) is None


async def test_lru_hands_out_fresh_copies() -> None:
    lru = LRUCache(10)
    await lru.put("k", answer())
    first = await lru.get("k")
    assert first is not None
    first.text, first.request_id = "mutated", "r1"
    second = await lru.get("k")
    assert second is not None and second.text == "red" and second.request_id == ""


async def test_lru_is_bounded_by_entries_and_evicts_least_recent() -> None:
    lru = LRUCache(max_entries=3)
    for k in "abc":
        await lru.put(k, answer(k))
    assert await lru.get("a") is not None  # a is now the most recent
    await lru.put("d", answer("d"))
    assert len(lru) == 3
    assert await lru.get("b") is None
    assert all([await lru.get(k) for k in "acd"])
    assert lru.evictions == 1


async def test_lru_is_bounded_by_bytes() -> None:
    lru = LRUCache(max_entries=1000, max_bytes=4000)
    for i in range(50):
        await lru.put(f"k{i}", answer("x" * 200))
    assert 0 < lru.nbytes <= 4000
    assert len(lru) < 50
    await lru.put("huge", answer("x" * 10_000))  # larger than the whole cache: not stored
    assert await lru.get("huge") is None and lru.nbytes <= 4000


async def test_lru_replacing_a_key_keeps_the_byte_count_exact() -> None:
    lru = LRUCache(10)
    await lru.put("k", answer("short"))
    before = lru.nbytes
    await lru.put("k", answer("a much longer answer"))
    await lru.put("k", answer("short"))
    assert lru.nbytes == before and len(lru) == 1

"""Helpers for the cache tests: a pipeline over the scripted engine, questions, a fake output filter."""

from __future__ import annotations

import dataclasses
from typing import Any

from tests.conftest import free_port, image_bytes  # noqa: F401 - re-exported for the cache tests
from tests.pipelines import wired_pipeline
from vqaserve.cache import CacheKeyBuilder, LRUCache, TieredCache
from vqaserve.cache.redis_cache import RedisCache
from vqaserve.cache.redis_link import RedisLink
from vqaserve.engines.scripted import ScriptedEngine
from vqaserve.images.decode import data_uri
from vqaserve.pipeline import Pipeline
from vqaserve.settings import Settings
from vqaserve.types import Answer, GenerationParams, ImageRef, Part, Question, Turn

SMALL_IMAGES = {"min_pixels": 32 * 32 * 4, "max_pixels": 32 * 32 * 64}


class DictCache:
    """An AnswerCache in a dict, for tests of what the pipeline stores (not how a cache stores it).
    A hit is a copy without the stored request's timings, as a real cache returns."""

    def __init__(self) -> None:
        self.data: dict[str, Answer] = {}
        self.gets = 0

    async def get(self, key: str) -> Answer | None:
        self.gets += 1
        hit = self.data.get(key)
        return None if hit is None else dataclasses.replace(hit, timings={})

    async def put(self, key: str, answer: Answer) -> None:
        self.data[key] = answer

    def note_coalesced(self) -> None:
        """Counted by the real cache; these tests do not look at it."""


class TextKey:
    """A cache key of the policy, the question's text and its pictures' hashes (no model)."""

    blocking = False

    def __call__(self, q: Question, model: str, policy: str) -> str:
        return f"{policy}|{q.last_user_text}|" + ",".join(i.content_hash for i in q.images)


class BlockWord:
    """An output filter that blocks one word; its version names the word (a blocklist change)."""

    def __init__(self, word: str = "forbidden") -> None:
        self.word = word
        self.version = f"blocklist:{word}"

    def is_blocked(self, text: str) -> bool:
        return self.word in text

    def refusal(self, question_text: str) -> str:
        return "Sorry, I can't help with that."

    def stream_guard(self) -> _Guard:
        return _Guard(self.word)


class _Guard:
    def __init__(self, word: str) -> None:
        self.word, self.seen = word, ""

    def feed(self, delta: str) -> tuple[str, bool]:
        self.seen += delta
        return delta, self.word in self.seen

    def flush(self) -> tuple[str, bool]:
        return "", self.word in self.seen


def make_pipeline(engine: ScriptedEngine | None = None, cache: TieredCache | None = None,
                  output_filter: BlockWord | None = None,
                  key_builder: CacheKeyBuilder | None = None) -> Pipeline:
    """Production's pipeline (micro-batcher and all) with the test's cache, key builder and output
    filter (none: no output filter, so answers are stored as generated)."""
    return wired_pipeline(engine or ScriptedEngine(), Settings(images=SMALL_IMAGES, safety_image="off"),
                          cache=cache or TieredCache(LRUCache(100)), cache_key=key_builder or CacheKeyBuilder(),
                          output_filter=output_filter)


# Generous where the timeout is not what a test is about: this machine is shared and often loaded.
TEST_TIMEOUT_MS = 3000


def redis_cache(url: str, *, prefix: str = "test", ttl_s: int = 7 * 24 * 3600, **link: Any) -> RedisCache:
    """An L2 on a Redis link of its own (in the server, one link serves the cache and the rate limiter)."""
    return RedisCache(RedisLink(url, **link), prefix=prefix, ttl_s=ttl_s)


def redis_tiered(url: str, probe_interval_s: float = 0.1) -> TieredCache:
    return TieredCache(LRUCache(100), redis_cache(url, probe_interval_s=probe_interval_s,
                                                  max_probe_interval_s=0.2, timeout_ms=TEST_TIMEOUT_MS))


async def close_redis(cache: TieredCache | RedisCache) -> None:
    """Close the Redis link under a cache the test made."""
    l2 = cache if isinstance(cache, RedisCache) else cache.l2
    assert l2 is not None
    await l2.link.aclose()


def ask(text: str, image: bytes, *, kind: str = "bytes", model: str | None = None,
        params: GenerationParams | None = None, stream: bool = False) -> Question:
    payload: bytes | str = image
    if kind == "data":

        payload = data_uri(image)
    return Question(turns=[Turn("user", [Part(image_ref=ImageRef(kind, payload)),  # type: ignore[arg-type]
                                         Part(text=text)])],
                    params=params or GenerationParams(), model=model, stream=stream)

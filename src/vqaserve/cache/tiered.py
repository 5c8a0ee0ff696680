"""L1 (in-process LRU) then L2 (Redis, optional); L2 hits are back-filled into L1.

This is the object the pipeline holds as `components.cache`. `stats()` is the metrics hook (plain
counters and sums the server's Prometheus collector reads); `health()` feeds /ready.
"""

from __future__ import annotations

import time

from vqaserve.cache import codec
from vqaserve.cache.lru import LRUCache
from vqaserve.cache.redis_cache import RedisCache
from vqaserve.types import Answer


class TieredCache:
    def __init__(self, l1: LRUCache, l2: RedisCache | None = None) -> None:
        self.l1 = l1
        self.l2 = l2
        self.coalesced = 0  # requests that waited for an identical in-flight generation
        self.latency = {"get_seconds_sum": 0.0, "get_seconds_count": 0,
                        "put_seconds_sum": 0.0, "put_seconds_count": 0}

    async def get(self, key: str) -> Answer | None:
        t0 = time.perf_counter()
        try:
            answer = await self.l1.get(key)
            if answer is not None or self.l2 is None:
                return answer
            raw = await self.l2.get_raw(key)
            answer = codec.decode(key, raw)
            if answer is None or raw is None:
                self.l2.counts["l2_misses"] += 1
                if raw is not None:
                    self.l2.counts["l2_corrupt"] += 1
                return None
            self.l2.counts["l2_hits"] += 1
            self.l1.put_raw(key, raw)  # already validated: back-fill without re-encoding
            return answer
        finally:
            self.latency["get_seconds_sum"] += time.perf_counter() - t0
            self.latency["get_seconds_count"] += 1

    async def put(self, key: str, answer: Answer) -> None:
        t0 = time.perf_counter()
        raw = codec.encode(key, answer)
        self.l1.put_raw(key, raw)
        try:
            if self.l2 is not None:
                await self.l2.put_raw(key, raw)
        finally:
            self.latency["put_seconds_sum"] += time.perf_counter() - t0
            self.latency["put_seconds_count"] += 1

    def note_coalesced(self) -> None:
        self.coalesced += 1

    async def health(self) -> dict[str, object]:
        if self.l2 is None:
            return {"status": "ok", "redis": "off"}
        return await self.l2.health()

    def stats(self) -> dict[str, float]:
        out: dict[str, float] = {**self.l1.stats(), **self.latency, "coalesced": self.coalesced}
        if self.l2 is not None:
            out.update(self.l2.stats())
        return out


"""L2: answers in Redis, shared by every process of a deployment.

Values are codec JSON (never pickle) under `<prefix>:v<schema>:<key>` with a TTL. Every call goes
through the process's one Redis link (cache/redis_link.py: time cap, no retries, circuit breaker),
so a dead or slow Redis is a plain miss after the first failure. Every value carries its own key, so
a reply meant for another request can never be served as this one's answer.
"""

from __future__ import annotations

from vqaserve.breaker import CircuitBreaker
from vqaserve.cache import codec
from vqaserve.cache.keys import CACHE_SCHEMA_VERSION
from vqaserve.cache.redis_link import RedisLink, Reply
from vqaserve.types import Answer


class RedisCache:
    level = "l2"

    def __init__(self, link: RedisLink, *, prefix: str = "vqa", ttl_s: int = 7 * 24 * 3600) -> None:
        self.link = link
        self.prefix = f"{prefix}:v{CACHE_SCHEMA_VERSION}:"
        self.ttl_s = ttl_s
        self.counts = {"l2_hits": 0, "l2_misses": 0, "l2_errors": 0, "l2_skipped": 0, "l2_corrupt": 0,
                       "l2_puts": 0, "l2_busy": 0}
        self.latency = {"l2_seconds_sum": 0.0, "l2_seconds_count": 0, "l2_seconds_max": 0.0}

    @property
    def breaker(self) -> CircuitBreaker:
        return self.link.breaker

    def full_key(self, key: str) -> str:
        return self.prefix + key

    def _count(self, reply: Reply) -> Reply:
        if reply.outcome != "ok":
            self.counts[f"l2_{'errors' if reply.outcome == 'error' else reply.outcome}"] += 1
        if reply.outcome != "skipped":
            self.latency["l2_seconds_sum"] += reply.seconds
            self.latency["l2_seconds_count"] += 1
            self.latency["l2_seconds_max"] = max(self.latency["l2_seconds_max"], reply.seconds)
        return reply

    async def get_raw(self, key: str) -> bytes | None:
        full = self.full_key(key)
        reply = self._count(await self.link.call(lambda redis: redis.get(full)))
        return reply.value if reply.ok else None

    async def get(self, key: str) -> Answer | None:
        raw = await self.get_raw(key)
        answer = codec.decode(key, raw)
        if answer is not None:
            self.counts["l2_hits"] += 1
            return answer
        if raw is not None:
            self.counts["l2_corrupt"] += 1  # a miss; the fresh answer overwrites it
        self.counts["l2_misses"] += 1
        return None

    async def put(self, key: str, answer: Answer) -> None:
        await self.put_raw(key, codec.encode(key, answer))

    async def put_raw(self, key: str, raw: bytes) -> None:
        full = self.full_key(key)
        reply = self._count(await self.link.call(lambda redis: redis.set(full, raw, ex=self.ttl_s)))
        if reply.ok:
            self.counts["l2_puts"] += 1

    async def health(self) -> dict[str, object]:
        return await self.link.health()

    def stats(self) -> dict[str, float]:
        return {**self.counts, **self.latency, "breaker_state": self.link.breaker.state_number,
                "breaker_opens": self.link.breaker.opens}

"""L2: answers in Redis (redis-py asyncio), shared by every process of a deployment.

Values are codec JSON (never pickle) under `<prefix>:v<schema>:<key>` with a TTL. Each call is
capped at `timeout_ms` (connect, write and read together) with no client-side retries, and a
circuit breaker turns a dead or slow Redis into plain misses after the first failure.

Cancellation (a client disconnecting mid-call) is safe twice over: redis-py >= 5.0.1 drops a
connection whose command was interrupted instead of reusing it with a reply still unread
(CVE-2023-28859), and every value carries its own key, so a reply meant for another request can
never be served as this one's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from vqaserve.breaker import CircuitBreaker
from vqaserve.cache import codec
from vqaserve.cache.keys import CACHE_SCHEMA_VERSION
from vqaserve.types import Answer

HEALTH_RECHECK_S = 5.0  # /ready pings Redis itself when nothing else has touched it for this long


class RedisCache:
    level = "l2"

    def __init__(self, url: str, *, prefix: str = "vqa", ttl_s: int = 7 * 24 * 3600,
                 timeout_ms: int = 100, failure_threshold: int = 1, probe_interval_s: float = 0.5,
                 max_probe_interval_s: float = 5.0, max_connections: int = 64) -> None:
        self.url = url
        self.prefix = f"{prefix}:v{CACHE_SCHEMA_VERSION}:"
        self.ttl_s = ttl_s
        self.timeout_s = timeout_ms / 1000.0
        self.max_connections = max_connections
        # A background PING decides recovery: no request ever waits for Redis to come back.
        self.breaker = CircuitBreaker(failure_threshold, probe_interval_s, name="redis",
                                      max_reset_s=max_probe_interval_s, probe=self._ping)
        self._client: Any = None
        self._slots = asyncio.Semaphore(max_connections)
        self._last_ok = 0.0
        self.counts = {"l2_hits": 0, "l2_misses": 0, "l2_errors": 0, "l2_skipped": 0, "l2_corrupt": 0,
                       "l2_puts": 0, "l2_busy": 0}
        self.latency = {"l2_seconds_sum": 0.0, "l2_seconds_count": 0, "l2_seconds_max": 0.0}

    def _redis(self) -> Any:
        if self._client is None:
            import redis.asyncio as aioredis  # heavy-ish import only when L2 is enabled
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            self._client = aioredis.Redis.from_url(
                self.url, socket_connect_timeout=self.timeout_s, socket_timeout=self.timeout_s,
                retry=Retry(NoBackoff(), 0), retry_on_timeout=False, health_check_interval=0,
                max_connections=self.max_connections, decode_responses=False)
        return self._client

    def full_key(self, key: str) -> str:
        return self.prefix + key

    async def _call(self, op: str, *args: Any, **kwargs: Any) -> tuple[bool, Any]:
        """Run one command within the time cap: (True, reply) or (False, None) after a failure."""
        from redis.exceptions import RedisError

        if not self.breaker.allow():
            self.counts["l2_skipped"] += 1
            return False, None
        t0 = time.perf_counter()
        # More concurrent calls than connections: wait a moment for one, else skip. Busy is not a
        # Redis failure, so it never trips the breaker (redis-py's pool would raise instead).
        try:
            await asyncio.wait_for(self._slots.acquire(), self.timeout_s)
        except TimeoutError:
            self.counts["l2_busy"] += 1
            return False, None
        try:
            async with asyncio.timeout(self.timeout_s):
                reply = await getattr(self._redis(), op)(*args, **kwargs)
        except (RedisError, OSError, TimeoutError) as exc:
            self.counts["l2_errors"] += 1
            self.breaker.record_failure(type(exc).__name__)
            return False, None
        finally:
            self._slots.release()
            self._observe(time.perf_counter() - t0)
        self.breaker.record_success()
        self._last_ok = time.monotonic()
        return True, reply

    def _observe(self, seconds: float) -> None:
        self.latency["l2_seconds_sum"] += seconds
        self.latency["l2_seconds_count"] += 1
        self.latency["l2_seconds_max"] = max(self.latency["l2_seconds_max"], seconds)

    async def get_raw(self, key: str) -> bytes | None:
        ok, raw = await self._call("get", self.full_key(key))
        return raw if ok else None

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
        ok, _ = await self._call("set", self.full_key(key), raw, ex=self.ttl_s)
        if ok:
            self.counts["l2_puts"] += 1

    async def _ping(self) -> None:
        async with asyncio.timeout(self.timeout_s):
            await self._redis().ping()
        self._last_ok = time.monotonic()

    async def health(self) -> dict[str, object]:
        """{"status": "ok" | "degraded", "redis": breaker state}; pings when Redis has been quiet."""
        if self.breaker.state == "closed" and time.monotonic() - self._last_ok > HEALTH_RECHECK_S:
            await self._call("ping")
        state = self.breaker.state
        return {"status": "ok" if state == "closed" else "degraded", "redis": state}

    def stats(self) -> dict[str, float]:
        return {**self.counts, **self.latency, "breaker_state": self.breaker.state_number,
                "breaker_opens": self.breaker.opens}

    async def aclose(self) -> None:
        await self.breaker.aclose()
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):  # closing a dead connection may fail; nothing to do
                await client.aclose()

"""One Redis connection for the whole process: the answer cache's L2 and the shared rate limits.

One client (redis-py asyncio, one pool) with one policy: every call capped at `timeout_ms` (connect,
write and read together), no client-side retries, at most `max_connections` calls at once (a call
that finds no free connection within the cap is skipped as `busy`, which says nothing about Redis),
and one circuit breaker in front: after a failure, calls are skipped at once while a background
PING decides when Redis is back, so no request ever waits for a dead or slow Redis.

Cancellation (a client disconnecting mid-call) is safe: redis-py >= 5.0.1 drops a connection whose
command was interrupted instead of reusing it with a reply still unread (CVE-2023-28859).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from vqaserve.breaker import BreakerOpen, CircuitBreaker

if TYPE_CHECKING:
    from vqaserve.settings import CacheSettings

HEALTH_RECHECK_S = 5.0  # /ready pings Redis itself when nothing else has touched it for this long
Outcome = Literal["ok", "skipped", "busy", "error"]


@dataclass
class Reply:
    """What one call gave: `value` when `outcome` is ok; the seconds it took (0 when skipped)."""

    outcome: Outcome
    value: Any = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


class RedisLink:
    def __init__(self, url: str, *, timeout_ms: int = 100, failure_threshold: int = 1,
                 probe_interval_s: float = 0.5, max_probe_interval_s: float = 5.0,
                 max_connections: int = 64) -> None:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            from vqaserve.errors import ConfigError

            raise ConfigError("VQA_REDIS_URL must look like redis://HOST:6379/0 (or rediss://, unix://)")
        self.url = url
        self.timeout_s = timeout_ms / 1000.0
        self.max_connections = max_connections
        self.breaker = CircuitBreaker(failure_threshold, probe_interval_s, name="redis",
                                      max_reset_s=max_probe_interval_s, probe=self._ping)
        self._client: Any = None
        self._slots = asyncio.Semaphore(max_connections)
        self._last_ok = 0.0

    @classmethod
    def from_settings(cls, cache: CacheSettings) -> RedisLink | None:
        """The process's Redis link, or None when VQA_REDIS_URL is not set."""
        if not cache.redis_url:
            return None
        return cls(cache.redis_url, timeout_ms=cache.redis_timeout_ms, probe_interval_s=cache.redis_probe_interval_s)

    def client(self) -> Any:
        if self._client is None:
            import redis.asyncio as aioredis  # heavy-ish import only when Redis is configured
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            self._client = aioredis.Redis.from_url(
                self.url, socket_connect_timeout=self.timeout_s, socket_timeout=self.timeout_s,
                retry=Retry(NoBackoff(), 0), retry_on_timeout=False, health_check_interval=0,
                max_connections=self.max_connections, decode_responses=False)
        return self._client

    async def call(self, command: Callable[[Any], Awaitable[Any]]) -> Reply:
        """Run `command(client)` within the time cap, through the breaker; never raises for Redis."""
        from redis.exceptions import RedisError

        t0 = time.perf_counter()
        try:
            with self.breaker.guard((RedisError, OSError, TimeoutError)) as call:
                try:
                    await asyncio.wait_for(self._slots.acquire(), self.timeout_s)
                except TimeoutError:
                    call.abstain()  # every connection busy: not a Redis failure
                    return Reply("busy", seconds=time.perf_counter() - t0)
                try:
                    async with asyncio.timeout(self.timeout_s):
                        value = await command(self.client())
                finally:
                    self._slots.release()
        except BreakerOpen:
            return Reply("skipped")
        except (RedisError, OSError, TimeoutError):
            return Reply("error", seconds=time.perf_counter() - t0)
        self._last_ok = time.monotonic()
        return Reply("ok", value, time.perf_counter() - t0)

    async def _ping(self) -> None:
        async with asyncio.timeout(self.timeout_s):
            await self.client().ping()
        self._last_ok = time.monotonic()

    async def health(self) -> dict[str, object]:
        """{"status": "ok" | "degraded", "redis": breaker state}; pings when Redis has been quiet."""
        if self.breaker.state == "closed" and time.monotonic() - self._last_ok > HEALTH_RECHECK_S:
            await self.call(lambda redis: redis.ping())
        state = self.breaker.state
        return {"status": "ok" if state == "closed" else "degraded", "redis": state}

    async def aclose(self) -> None:
        await self.breaker.aclose()
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):  # closing a dead connection may fail; nothing to do
                await client.aclose()

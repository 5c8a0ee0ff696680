"""Per-key rate limits: requests/min and images/min as token buckets (burst = one minute's worth).

With VQA_REDIS_URL the buckets live in Redis and are shared by every worker and instance: one Lua
script refills and takes from both buckets atomically, on Redis' own clock. The calls go through the
process's one Redis link (cache/redis_link.py: short timeouts, the Redis circuit breaker shared with
the answer cache); when Redis is down or slow the limiter falls back to in-process buckets (per
process, so briefly more generous) until the link's probe sees Redis back. The service never stops
for Redis.

Only the API (`/v1/...`) is limited; probes, metrics and the page are not. The caller is the API
key (its digest) or, with no keys configured, the client address.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vqaserve.cache.redis_link import RedisLink
from vqaserve.server.middleware import error_json

MAX_LOCAL_BUCKETS = 10_000  # pruned beyond this (only full, i.e. idle, buckets are dropped)

# KEYS: bucket keys. ARGV: per bucket (rate per s, capacity, cost). Returns {allowed, wait seconds}.
# Floats cross the Lua boundary as strings (Lua numbers returned to Redis are truncated to integers).
TOKEN_BUCKET_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local level = {}
local wait = 0
for i, key in ipairs(KEYS) do
  local rate, cap, cost = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens, ts = tonumber(state[1]), tonumber(state[2])
  if tokens == nil or ts == nil then tokens, ts = cap, now end
  tokens = math.min(cap, tokens + math.max(0, now - ts) * rate)
  level[i] = tokens
  if tokens < cost then wait = math.max(wait, (cost - tokens) / rate) end
end
if wait > 0 then return {0, tostring(wait)} end
for i, key in ipairs(KEYS) do
  local rate, cap, cost = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  redis.call('HSET', key, 'tokens', tostring(level[i] - cost), 'ts', tostring(now))
  redis.call('PEXPIRE', key, math.ceil(cap / rate * 1000) + 1000)
end
return {1, '0'}
"""


@dataclass
class Limit:
    """`per_minute` tokens per minute; a bucket holds at most one minute's worth."""

    name: str  # "requests" | "images"
    per_minute: int

    @property
    def rate(self) -> float:
        return self.per_minute / 60.0


class LocalBuckets:
    """In-process buckets. Not locked: called from the event loop only, with no await inside."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, monotonic time)

    def _level(self, key: str, limit: Limit, now: float) -> float:
        tokens, ts = self._buckets.get(key, (float(limit.per_minute), now))
        return min(float(limit.per_minute), tokens + max(0.0, now - ts) * limit.rate)

    def take(self, wanted: list[tuple[str, Limit, int]]) -> float:
        """0.0 when granted (tokens taken from every bucket), else seconds to wait (nothing taken)."""
        now = time.monotonic()
        levels = [self._level(key, limit, now) for key, limit, _ in wanted]
        wait = max((cost - level) / limit.rate
                   for (_, limit, cost), level in zip(wanted, levels, strict=True))
        if wait > 0:
            return wait
        for (key, _, cost), level in zip(wanted, levels, strict=True):
            self._buckets[key] = (level - cost, now)
        if len(self._buckets) > MAX_LOCAL_BUCKETS:
            self._prune(now)
        return 0.0

    def _prune(self, now: float) -> None:
        # A bucket idle for over a minute is full again: forgetting it changes nothing.
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60.0}


class RateLimiter:
    def __init__(self, rpm: int, ipm: int, redis: RedisLink | None = None, prefix: str = "vqa") -> None:
        self.requests = Limit("requests", rpm) if rpm > 0 else None
        self.images = Limit("images", ipm) if ipm > 0 else None
        self.local = LocalBuckets()
        self.prefix = prefix
        self.redis = redis
        self._script: Any = None
        self.redis_failures = 0  # checks that fell back to local buckets because Redis failed

    @property
    def enabled(self) -> bool:
        return self.requests is not None or self.images is not None

    def _wanted(self, caller: str, images: int) -> list[tuple[str, Limit, int]]:
        wanted = []
        if self.requests is not None:
            wanted.append((f"{self.prefix}:rl:{caller}:rpm", self.requests, 1))
        if self.images is not None and images > 0:
            wanted.append((f"{self.prefix}:rl:{caller}:ipm", self.images, images))
        return wanted

    async def check(self, caller: str, images: int = 0) -> float:
        """0.0 = go ahead; otherwise the seconds after which the same request would be allowed."""
        wanted = self._wanted(caller, images)
        if not wanted:
            return 0.0
        if self.redis is not None:
            reply = await self.redis.call(lambda client: self._take_redis(client, wanted))
            if reply.ok:
                allowed, wait = reply.value
                return 0.0 if int(allowed) == 1 else float(wait)
            if reply.outcome == "error":
                self.redis_failures += 1
        return self.local.take(wanted)

    def _take_redis(self, client: Any, wanted: list[tuple[str, Limit, int]]) -> Any:
        if self._script is None:
            self._script = client.register_script(TOKEN_BUCKET_LUA)
        args: list[Any] = []
        for _, limit, cost in wanted:
            args += [repr(limit.rate), limit.per_minute, cost]
        return self._script(keys=[key for key, _, _ in wanted], args=args)


def count_images(path: str, body: bytes) -> int:
    """Images a request asks about (0 when the body is not what the route expects: it will 400)."""
    if path == "/v1/vqa":
        return 1  # the form takes exactly one file
    if path != "/v1/chat/completions":
        return 0
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return 0
    messages = data.get("messages") if isinstance(data, dict) else None
    count = 0
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            count += sum(1 for part in content if isinstance(part, dict) and part.get("type") == "image_url")
    return count


class RateLimitMiddleware:
    """429 `rate_limited` + Retry-After when a caller's bucket is empty. Sits after the body limit."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.limiter.enabled or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        caller = state.get("api_key_id") or "ip:" + str((scope.get("client") or ("-",))[0])
        images = 0
        replay: list[Message] = []
        if self.limiter.images is not None and scope["method"] == "POST":
            body, replay = await _read_body(receive)
            if body is None:
                return  # the client left
            images = count_images(scope["path"], body)
            if images > self.limiter.images.per_minute:
                await error_json(400, f"this request has {images} images but the limit is "
                                 f"{self.limiter.images.per_minute} images per minute; send fewer "
                                 "images per request", "invalid_request_error", "messages",
                                 "too_many_images")(scope, receive, send)
                return
        wait = await self.limiter.check(caller, images)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            await error_json(429, f"rate limit reached for this API key; retry after {retry} s "
                             "(limits: VQA_RATE_LIMIT_RPM requests and VQA_RATE_LIMIT_IPM images per "
                             "minute)", "rate_limit_error", None, "rate_limited",
                             headers={"Retry-After": str(retry)})(scope, receive, send)
            return
        if not replay:
            await self.app(scope, receive, send)
            return

        async def replayed() -> Message:
            return replay.pop(0) if replay else await receive()

        await self.app(scope, replayed, send)


async def _read_body(receive: Receive) -> tuple[bytes | None, list[Message]]:
    """The whole body (already capped by the body-limit layer) and the messages to replay."""
    messages: list[Message] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None, []
        messages.append(message)
        if not message.get("more_body", False):
            return b"".join(m.get("body", b"") for m in messages), messages

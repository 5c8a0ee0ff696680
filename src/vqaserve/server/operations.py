"""The operations layers in the order `create_app` stacks them (outermost first).

    access log -> drain (503 while shutting down) -> API key (401) -> body limit (413)
               -> rate limit (429; needs the body to count images) -> disconnect watch -> routes

Cheap refusals (shutting down, no key) come before the body is read, so an unauthenticated client
cannot make the server buffer a 25 MB body.
"""

from __future__ import annotations

import logging

from starlette.middleware import Middleware

from vqaserve.cache.redis_link import RedisLink
from vqaserve.server.access import ApiKeyMiddleware
from vqaserve.server.disconnect import DisconnectWatchMiddleware
from vqaserve.server.ratelimit import RateLimiter, RateLimitMiddleware
from vqaserve.server.shutdown import Drain, DrainMiddleware
from vqaserve.settings import Settings

log = logging.getLogger("vqaserve.server")
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def ops_middleware(settings: Settings, drain: Drain) -> list[Middleware]:
    s = settings.server
    if not s.api_keys and s.host not in LOOPBACK:
        log.warning("serving on %s without API keys: anyone who can reach it can use the model; "
                    "set VQA_API_KEYS_FILE (or VQA_API_KEYS)", s.host)
    return [Middleware(DrainMiddleware, drain=drain),
            Middleware(ApiKeyMiddleware, keys=s.api_keys, public_web_page=s.public_web_page)]


def ops_middleware_after_body(settings: Settings, redis: RedisLink | None) -> list[Middleware]:
    s = settings.server
    limiter = RateLimiter(s.rate_limit_rpm, s.rate_limit_ipm, redis=redis, prefix=settings.cache.redis_prefix)
    return [Middleware(RateLimitMiddleware, limiter=limiter), Middleware(DisconnectWatchMiddleware)]

"""The answer cache: content keys, L1 LRU, L2 Redis with a breaker, coalescing, near-duplicates.

`build_cache(settings)` gives the pipeline its `cache` and `cache_key`; see docs/cache.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vqaserve.cache.keys import CACHE_SCHEMA_VERSION, CacheKeyBuilder
from vqaserve.cache.lru import LRUCache
from vqaserve.cache.tiered import TieredCache

if TYPE_CHECKING:
    from vqaserve.settings import Settings

__all__ = ["CACHE_SCHEMA_VERSION", "CacheKeyBuilder", "LRUCache", "TieredCache", "build_cache"]


def build_cache(settings: Settings) -> tuple[TieredCache, CacheKeyBuilder]:
    """The tiered cache (L2 only when VQA_REDIS_URL is set) and its key builder."""
    from vqaserve.cache.redis_cache import RedisCache

    c = settings.cache
    l2 = None
    if c.redis_url:
        if not c.redis_url.startswith(("redis://", "rediss://", "unix://")):
            from vqaserve.errors import ConfigError

            raise ConfigError("VQA_REDIS_URL must look like redis://HOST:6379/0 (or rediss://, unix://)")
        l2 = RedisCache(c.redis_url, prefix=c.redis_prefix, ttl_s=c.redis_ttl_s,
                        timeout_ms=c.redis_timeout_ms, probe_interval_s=c.redis_probe_interval_s)
    canonicalizer = None
    if c.near_duplicates:
        from vqaserve.cache.neardup import NearDuplicateIndex

        canonicalizer = NearDuplicateIndex(max_images=c.near_duplicates_max)
    return TieredCache(LRUCache(c.size, c.max_bytes), l2), CacheKeyBuilder(canonicalizer)

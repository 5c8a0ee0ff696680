"""The answer cache: content keys, L1 LRU, L2 Redis with a breaker, coalescing, near-duplicates.

`build_cache(settings)` gives the pipeline its `cache` and `cache_key`; see docs/cache.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vqaserve.cache.keys import CACHE_SCHEMA_VERSION, CacheKeyBuilder
from vqaserve.cache.lru import LRUCache
from vqaserve.cache.tiered import TieredCache

if TYPE_CHECKING:
    from vqaserve.cache.redis_link import RedisLink
    from vqaserve.settings import Settings

__all__ = ["CACHE_SCHEMA_VERSION", "CacheKeyBuilder", "LRUCache", "TieredCache", "build_cache"]


def build_cache(settings: Settings, redis: RedisLink | None = None) -> tuple[TieredCache, CacheKeyBuilder]:
    """The tiered cache (L2 on `redis`, the process's Redis link, when there is one) and its key builder."""
    from vqaserve.cache.redis_cache import RedisCache

    c = settings.cache
    l2 = RedisCache(redis, prefix=c.redis_prefix, ttl_s=c.redis_ttl_s) if redis is not None else None
    canonicalizer = None
    if c.near_duplicates:
        from vqaserve.cache.neardup import NearDuplicateIndex

        canonicalizer = NearDuplicateIndex(max_images=c.near_duplicates_max)
    return TieredCache(LRUCache(c.size, c.max_bytes), l2), CacheKeyBuilder(canonicalizer)

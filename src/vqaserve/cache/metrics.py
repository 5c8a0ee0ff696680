"""Prometheus view of the cache: a collector that reads `TieredCache.stats()` on each scrape.

Register it on the app's registry: `metrics.registry.register(CacheCollector(cache))`. Reading at
scrape time keeps the cache free of any Prometheus dependency on its hot path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol


class HasStats(Protocol):
    def stats(self) -> dict[str, float]: ...


# stat name -> (metric name, help, labels)
_COUNTERS: dict[str, tuple[str, str, dict[str, str]]] = {
    "l1_hits": ("cache_level_hits", "Answer cache hits per level", {"level": "l1"}),
    "l2_hits": ("cache_level_hits", "Answer cache hits per level", {"level": "l2"}),
    "l1_misses": ("cache_level_misses", "Answer cache misses per level", {"level": "l1"}),
    "l2_misses": ("cache_level_misses", "Answer cache misses per level", {"level": "l2"}),
    "l2_errors": ("cache_redis_errors", "Redis calls that failed or timed out", {}),
    "l2_skipped": ("cache_redis_skipped", "Redis calls skipped while the breaker was open", {}),
    "l2_busy": ("cache_redis_busy", "Redis calls skipped because every connection was busy", {}),
    "l2_corrupt": ("cache_redis_corrupt", "Redis values refused as corrupt, foreign or old", {}),
    "breaker_opens": ("cache_breaker_opens", "Times the Redis circuit breaker opened", {}),
    "coalesced": ("cache_coalesced", "Requests that waited for an identical in-flight generation", {}),
    "l1_evictions": ("cache_l1_evictions", "Entries evicted from the in-process cache", {}),
}
_GAUGES: dict[str, tuple[str, str]] = {
    "l1_entries": ("cache_l1_entries", "Entries in the in-process cache"),
    "l1_bytes": ("cache_l1_bytes", "Bytes held by the in-process cache"),
    "breaker_state": ("cache_breaker_state", "Redis circuit breaker: 0 closed, 1 open, 2 half-open"),
}
_SUMMARIES: dict[str, tuple[str, str]] = {  # prefix of *_seconds_sum / *_seconds_count
    "get": ("cache_get_seconds", "Latency of cache lookups (L1 then L2)"),
    "put": ("cache_put_seconds", "Latency of cache writes"),
    "l2": ("cache_redis_seconds", "Latency of Redis calls"),
}


class CacheCollector:
    def __init__(self, cache: HasStats, namespace: str = "vqa") -> None:
        self.cache = cache
        self.ns = namespace

    def describe(self) -> list[Any]:
        return []  # unchecked collector: metrics appear once the cache has them

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

        stats = self.cache.stats()
        families: dict[str, Any] = {}
        for stat, (name, doc, labels) in _COUNTERS.items():
            if stat not in stats:
                continue
            fam = families.get(name)
            if fam is None:
                fam = families[name] = CounterMetricFamily(f"{self.ns}_{name}", doc, labels=list(labels))
            fam.add_metric(list(labels.values()), float(stats[stat]))
        yield from families.values()
        for stat, (name, doc) in _GAUGES.items():
            if stat in stats:
                yield GaugeMetricFamily(f"{self.ns}_{name}", doc, value=float(stats[stat]))
        for prefix, (name, doc) in _SUMMARIES.items():
            total, count = stats.get(f"{prefix}_seconds_sum"), stats.get(f"{prefix}_seconds_count")
            if total is not None and count is not None:
                yield SummaryMetricFamily(f"{self.ns}_{name}", doc, count_value=int(count), sum_value=total)

"""build_components wires the cache from settings: L1 always, L2 with VQA_REDIS_URL, /ready hooks."""

from __future__ import annotations

import pytest

from vqaserve.cache import TieredCache
from vqaserve.cache.neardup import NearDuplicateIndex
from vqaserve.engines.scripted import ScriptedEngine
from vqaserve.settings import load_settings
from vqaserve.wiring import build_components

pytestmark = pytest.mark.unit


async def test_default_is_l1_only_with_health_and_stats() -> None:
    c = build_components(load_settings(), ScriptedEngine())
    assert isinstance(c.cache, TieredCache) and c.cache.l2 is None and c.cache.l1.max_entries == 1000
    assert c.cache_key is not None and not c.cache_key.blocking
    assert await c.health["cache"]() == {"status": "ok", "redis": "off"}
    assert c.cache.stats()["l1_entries"] == 0 and c.closers == [c.batcher.close]  # nothing else to close


def test_env_names_enable_redis_size_and_near_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQA_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("VQA_CACHE_SIZE", "7")
    monkeypatch.setenv("VQA_CACHE_NEAR_DUPLICATES", "1")
    c = build_components(load_settings(), ScriptedEngine())
    assert isinstance(c.cache, TieredCache) and c.cache.l2 is not None
    assert c.cache.l2.link.timeout_s == pytest.approx(0.1) and c.cache.l1.max_entries == 7
    assert c.cache.l2.link.aclose in c.closers  # a link made here is closed with the components
    assert isinstance(c.cache_key.canonicalizer, NearDuplicateIndex)  # type: ignore[union-attr]


def test_a_malformed_redis_url_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from vqaserve.errors import ConfigError

    monkeypatch.setenv("VQA_REDIS_URL", "http://cache:6379")
    with pytest.raises(ConfigError, match="VQA_REDIS_URL must look like redis://"):
        build_components(load_settings(), ScriptedEngine())


def test_cache_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQA_CACHE__ENABLED", "false")
    c = build_components(load_settings(), ScriptedEngine())
    assert c.cache is None and c.cache_key is None


async def test_prometheus_collector_exposes_levels_breaker_and_latency() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from vqaserve.cache import LRUCache
    from vqaserve.cache.metrics import CacheCollector
    from vqaserve.types import Answer

    cache = TieredCache(LRUCache(10))
    await cache.put("k", Answer(text="red", model="m"))
    await cache.get("k")
    await cache.get("other")
    registry = CollectorRegistry()
    registry.register(CacheCollector(cache))
    text = generate_latest(registry).decode()
    assert 'vqa_cache_level_hits_total{level="l1"} 1.0' in text
    assert 'vqa_cache_level_misses_total{level="l1"} 1.0' in text
    assert "vqa_cache_get_seconds_count 2.0" in text and "vqa_cache_l1_entries 1.0" in text

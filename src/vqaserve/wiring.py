"""Builds the engine and the pipeline's components from Settings. The one place that picks classes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vqaserve.cache.redis_link import RedisLink
from vqaserve.components import Components
from vqaserve.engines.base import Engine
from vqaserve.errors import ConfigError
from vqaserve.pipeline import Pipeline
from vqaserve.settings import Settings

if TYPE_CHECKING:
    from vqaserve.metrics import Metrics


def build_engine(settings: Settings) -> Engine:
    kind = settings.llm.engine
    if kind == "transformers":
        from vqaserve.engines.transformers import TransformersEngine

        return TransformersEngine(settings)
    if kind == "upstream":
        from vqaserve.engines.upstream import UpstreamEngine

        return UpstreamEngine(settings)
    if kind == "scripted":
        from vqaserve.engines.scripted import ScriptedEngine

        return ScriptedEngine(model_id="scripted")
    raise ConfigError(f"unknown engine {kind!r}; use transformers, upstream or scripted")


def build_components(settings: Settings, engine: Engine, metrics: Metrics | None = None,
                     redis: RedisLink | None = None) -> Components:
    """Safety, cache, batching and fetching, each from its own module, configured by settings.

    `metrics` (given by the server) gets the stage timings (`observe`),
    the batcher's figures, the cache's stats and every circuit breaker (the engine's, Redis').
    `redis` is the process's Redis link when the caller owns one (the server shares it with the rate
    limiter); without it, one is made here for the cache when VQA_REDIS_URL is set, and closed with
    the components.
    """
    components = Components()
    if redis is None and settings.cache.enabled:
        from vqaserve.cache.redis_link import RedisLink

        redis = RedisLink.from_settings(settings.cache)
        if redis is not None:
            components.closers.append(redis.aclose)
    if metrics is not None:
        components.observe = metrics.observe_stage
        components.answered = metrics.observe_answer
        metrics.watch_breakers({**engine.breakers(), **({"redis": redis.breaker} if redis else {})})
    _add_safety(settings, components)
    if settings.cache.enabled:
        from vqaserve.cache import build_cache

        components.cache, components.cache_key = build_cache(settings, redis)
        components.health["cache"] = components.cache.health
        if metrics is not None:
            from vqaserve.cache.metrics import CacheCollector

            metrics.add_collector(CacheCollector(components.cache))  # per worker: see metrics.py
    _add_batcher(settings, engine, components, metrics)
    return components


def _add_batcher(settings: Settings, engine: Engine, components: Components,
                 metrics: Metrics | None) -> None:
    """Always through an admission queue (bound -> 429, deadlines, cancellation).

    In-process engines get the micro-batcher (max_size=1 = batching off); a model server that
    batches continuously itself (vLLM) gets admission only, each request sent at once.
    """
    observer = metrics.observe_batch if metrics is not None else None
    if engine.batches_itself:
        from vqaserve.scheduling.gate import ConcurrencyGate

        components.batcher = ConcurrencyGate.from_settings(engine, settings.batching, observer=observer)
    else:
        from vqaserve.scheduling.batching import MicroBatcher

        components.batcher = MicroBatcher.from_settings(engine, settings.batching, observer=observer)
    components.closers.insert(0, components.batcher.close)  # first: fail what waits, then free the rest


def _add_safety(settings: Settings, components: Components) -> None:
    """Image check, output blocklist, prompt guard and the SSRF-safe URL fetcher (issue 5)."""
    from vqaserve.images.fetch import Fetcher
    from vqaserve.safety.image_check import build_image_checker
    from vqaserve.safety.moderation import BlocklistFilter
    from vqaserve.safety.prompt_guard import ControlTokenGuard

    components.image_checker = build_image_checker(settings)
    components.output_filter = BlocklistFilter.from_settings(settings)
    components.prompt_guard = ControlTokenGuard(settings.generation.max_question_chars)
    components.fetcher = Fetcher(settings)


def build_pipeline(settings: Settings, engine: Engine | None = None, metrics: Metrics | None = None,
                   redis: RedisLink | None = None) -> Pipeline:
    engine = engine or build_engine(settings)
    return Pipeline(settings, engine, build_components(settings, engine, metrics, redis))

"""Builds the engine and the pipeline's components from Settings. The one place that picks classes."""

from __future__ import annotations

from vqaserve.engines.base import Engine
from vqaserve.errors import ConfigError
from vqaserve.pipeline import Components, Pipeline
from vqaserve.settings import Settings


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


def build_components(settings: Settings, engine: Engine) -> Components:
    """Safety, cache, batching and fetching, each from its own module, configured by settings."""
    return Components()


def build_pipeline(settings: Settings, engine: Engine | None = None) -> Pipeline:
    engine = engine or build_engine(settings)
    return Pipeline(settings, engine, build_components(settings, engine))

"""Pipelines for tests, built the way production builds them: `wiring.build_components` puts safety,
the cache, admission and (for in-process engines) the micro-batcher in front of the engine, so a test
goes through the same path a request does. Production never runs a Pipeline without them."""

from __future__ import annotations

import dataclasses
from typing import Any

from vqaserve.engines.base import Engine
from vqaserve.pipeline import Pipeline
from vqaserve.settings import SafetySettings, Settings


def wired_pipeline(engine: Engine | None = None, settings: Settings | None = None, **components: Any) -> Pipeline:
    """The scripted engine (or `engine`) behind production's components. Without `settings`: the
    defaults with the image check off (NudeNet costs ~0.1-0.3 s an image; tests/safety runs it).
    `components` replace wired ones by name: a test's own cache, cache key or output filter."""
    from vqaserve.engines.scripted import ScriptedEngine
    from vqaserve.wiring import build_components

    settings = settings or Settings(safety=SafetySettings(image="off"))
    engine = engine or ScriptedEngine()
    wired = dataclasses.replace(build_components(settings, engine), **components)
    return Pipeline(settings, engine, wired)

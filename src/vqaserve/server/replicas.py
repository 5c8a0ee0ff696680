"""Running several gateway processes: `vqa serve --workers N` and replicas behind a load balancer.

What may be replicated: with `--engine upstream` a gateway process holds no model, only an HTTP client
to the model server, so any number of workers and replicas can share one vLLM (and one Redis cache).
The in-process engine loads the model into each process: N workers would hold N copies of the weights
and compete for the same cores or GPU, so it runs one worker per process and scales by replicas on
separate machines (or GPUs) instead.
"""

from __future__ import annotations

from vqaserve.errors import ConfigError
from vqaserve.settings import Settings

REPLICABLE_ENGINES = ("upstream", "scripted")  # engines that hold no model weights in the process


def check_workers(settings: Settings) -> list[str]:
    """Refuse worker counts the engine cannot honour; return advice lines (log them) for the rest."""
    workers = settings.server.workers
    engine = settings.llm.engine
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1 (got {workers})")
    if workers > 1 and engine not in REPLICABLE_ENGINES:
        raise ConfigError(
            f"--workers {workers} needs --engine upstream: the {engine} engine loads the model into each "
            "worker process (one model per process), so run --workers 1, or serve the model with vLLM "
            "and put gateways in front with --engine upstream --upstream-url URL (docs/deploy.md)")
    advice: list[str] = []
    if workers > 1 and settings.cache.enabled and not settings.cache.redis_url:
        advice.append(f"{workers} workers each keep their own in-process answer cache; set VQA_REDIS_URL "
                      "so they share one")
    return advice

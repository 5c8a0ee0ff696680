"""Running several gateway processes: `vqa serve --workers N` and replicas behind a load balancer.

What may be replicated: with `--engine upstream` a gateway process holds no model, only an HTTP client
to the model server, so any number of workers and replicas can share one vLLM (and one Redis cache).
The in-process engine loads the model into each process: N workers would hold N copies of the weights
and compete for the same cores or GPU, so it runs one worker per process and scales by replicas on
separate machines (or GPUs) instead.

uvicorn starts workers as fresh processes that build the app from the environment, so the parent's
final settings (CLI flags included) are handed down as one JSON variable per settings group.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

from vqaserve.errors import ConfigError
from vqaserve.settings import FLAT, Settings

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


def worker_environment(settings: Settings) -> dict[str, str]:
    """Environment that makes `load_settings()` in a worker process rebuild exactly these settings."""
    env = {f"VQA_{group.upper()}": getattr(settings, group).model_dump_json()
           for group in type(settings).model_fields}
    # The API keys file was already read into api_keys; reading it again would double them.
    env["VQA_SERVER"] = settings.server.model_copy(update={"api_keys_file": None}).model_dump_json()
    return env


def export_to_workers(settings: Settings, environ: MutableMapping[str, str] | None = None) -> None:
    """Put `worker_environment` into os.environ (what uvicorn's workers inherit) and drop flat VQA_X
    names, which would otherwise override the groups with values the CLI flags already replaced."""
    environ = os.environ if environ is None else environ
    for name in FLAT:
        environ.pop(f"VQA_{name.upper()}", None)
    for key in [k for k in environ if k.startswith("VQA_") and "__" in k]:
        environ.pop(key)
    environ.update(worker_environment(settings))

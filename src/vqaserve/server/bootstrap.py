"""Start-up of a serving process, one path for `vqa serve` and for each of its `--workers N` processes.

`vqa serve` (cli/serve.py) turns flags into Settings and calls `serve()`. With one process, `serve()`
builds the app here (`bootstrap`) and runs it; with N workers, uvicorn starts N processes that each
call `create_app_from_env`, which reads the same settings from VQA_* variables and calls the same
`bootstrap`. So both paths set up logging, this process's read deadlines and the app alike.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from typing import Any

from fastapi import FastAPI

from vqaserve.server.limits import uvicorn_limits
from vqaserve.server.replicas import check_workers
from vqaserve.settings import Settings

log = logging.getLogger("vqaserve.serve")
FACTORY = "vqaserve.server.bootstrap:create_app_from_env"  # what each worker process runs


def configure_logging(level: str, json_lines: bool) -> None:
    """Log to stderr: JSON access lines as they are, other lines with a time and level prefix."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        # Access lines are already JSON documents; other lines get a plain prefix.
        handler.setFormatter(logging.Formatter("%(message)s" if json_lines else
                                               "%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level.upper())


def uvicorn_options(settings: Settings, log_level: str) -> dict[str, Any]:
    """uvicorn.Config keyword arguments: address, logging, read deadlines, caps, grace, proxies."""
    s = settings.server
    return {"host": s.host, "port": s.port, "log_level": log_level,
            "access_log": False,  # our own JSON access log replaces uvicorn's
            "log_config": None, **uvicorn_limits(settings), **proxy_options(settings)}


def proxy_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's X-Forwarded-For handling: only from VQA_FORWARDED_ALLOW_IPS, never by default.

    uvicorn on its own trusts 127.0.0.1 (or $FORWARDED_ALLOW_IPS); then anything that connects over
    loopback (an SSH tunnel, a sidecar, another user) could pick the address that rate limits and logs see.
    """
    ips = settings.server.forwarded_allow_ips
    return {"proxy_headers": bool(ips), "forwarded_allow_ips": list(ips) if ips else None}


def bootstrap(settings: Settings, log_level: str) -> FastAPI:
    """What every serving process does first: logging, its read deadlines, the app."""
    from vqaserve.server.app import create_app

    configure_logging(log_level, settings.server.log_json)
    uvicorn_limits(settings)  # the deadlines live on the protocol class: set them in this process
    return create_app(settings)


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` (each of N workers): settings from VQA_* variables."""
    from vqaserve.settings import load_settings

    # A worker starts with bare logging: set it up as in the parent, at the --log-level uvicorn has
    # already applied to its own loggers here.
    level = logging.getLevelName(logging.getLogger("uvicorn.error").getEffectiveLevel())
    return bootstrap(load_settings(), str(level).lower())


def serve(settings: Settings, log_level: str, flags: dict[str, str]) -> None:
    """Runs the service until it is stopped; `flags` are VQA_* values the workers must also see.

    Raises the start-up error of a model that cannot load (so the caller exits non-zero).
    """
    import uvicorn

    from vqaserve.server.shutdown import GracefulServer
    from vqaserve.server.state import app_state

    configure_logging(log_level, settings.server.log_json)
    for advice in check_workers(settings):  # refuses --workers N>1 for engines that hold a model
        log.warning(advice)
    options = uvicorn_options(settings, log_level)
    if settings.server.workers > 1:
        _serve_workers(settings, options, flags)
        return
    app = bootstrap(settings, log_level)
    held = app_state(app)
    server = GracefulServer(uvicorn.Config(app, **options), drain=held.drain)

    def stop() -> None:
        server.should_exit = True

    # The model loads behind an open port (server/startup.py). If it cannot load, this process can
    # never answer: stop, so the supervisor (systemd, Kubernetes) sees a failed exit and the error,
    # rather than a process that stays up unready for good.
    held.startup.on_failed = stop
    server.run()  # drains on SIGTERM/SIGINT (503 to new requests, in-flight ones finish), then returns
    if held.startup.error is not None:
        raise held.startup.error


def _serve_workers(settings: Settings, options: dict[str, Any], flags: dict[str, str]) -> None:
    """N uvicorn worker processes, each building its app from the environment, sharing one
    Prometheus folder so that /metrics adds up all workers, whichever answers the scrape."""
    import uvicorn

    os.environ.update(flags)
    if settings.llm.adapters:
        os.environ["VQA_ADAPTERS"] = ",".join(f"{k}={v}" for k, v in settings.llm.adapters.items())
    # Fresh for every run: files left by an earlier run would be added to this one's counts.
    # prometheus_client picks its multiprocess mode when a worker imports it, so set it before.
    folder = tempfile.mkdtemp(prefix="vqa-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    log.info("%d workers share metrics through %s (removed at exit)", settings.server.workers, folder)
    try:
        uvicorn.run(FACTORY, factory=True, workers=settings.server.workers, **options)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

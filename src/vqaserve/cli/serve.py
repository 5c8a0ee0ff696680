"""`vqa serve`: the HTTP service on uvicorn. Every flat VQA_* setting is also a flag.

The flags are generated from `settings.FLAT`, so a new public setting becomes a flag by itself:
VQA_MAX_PIXELS <-> --max-pixels, VQA_FETCH_ALLOW_PRIVATE <-> --fetch-allow-private.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from vqaserve.settings import FLAT, Settings


def _field(name: str) -> Any:
    group, fld = FLAT[name]
    model: Any = Settings.model_fields[group].annotation
    return model.model_fields[fld]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg, unused-ignore]
    p = sub.add_parser("serve", help="run the HTTP service (OpenAI-compatible API + web page)",
                       description="Serve the API and the web page. Every flag is also an environment "
                                   "variable: --max-pixels N == VQA_MAX_PIXELS=N. Flags win.")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                   help="serve a LoRA adapter under NAME (repeatable); clients pick it with model=NAME; "
                        "a bare NAME is an adapter bundled with vqaserve")
    for name in FLAT:
        flag = "--" + name.replace("_", "-")
        env = f"VQA_{name.upper()}"
        info = _field(name)
        text = f"{info.description} (env {env})".replace("%", "%%")
        if info.annotation is bool:
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif name == "adapters":
            p.add_argument(flag, dest=name, default=None, metavar="NAME=PATH,...", help=text)
        else:
            p.add_argument(flag, dest=name, default=None, metavar=name.split("_")[-1].upper(), help=text)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> Settings:
    from vqaserve.settings import load_settings, parse_adapters

    overrides: dict[str, Any] = {name: getattr(args, name, None) for name in FLAT}
    if args.adapter:
        try:
            merged = parse_adapters(overrides.get("adapters") or os.environ.get("VQA_ADAPTERS") or [])
            merged.update(parse_adapters([_bundled(a) for a in args.adapter]))
        except ValueError as exc:
            from vqaserve.errors import ConfigError

            raise ConfigError(f"--adapter: {exc}") from None
        overrides["adapters"] = merged
    return load_settings(**overrides)


def _bundled(value: str) -> str:
    """`--adapter NAME` alone names an adapter bundled next to the models (like `vqa ask`)."""
    from vqaserve.settings import BUNDLED_MODELS

    if "=" not in value and (BUNDLED_MODELS / value).is_dir():
        return f"{value}={BUNDLED_MODELS / value}"
    return value


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


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from vqaserve.errors import ConfigError
    from vqaserve.server.app import create_app
    from vqaserve.server.limits import uvicorn_limits
    from vqaserve.server.shutdown import GracefulServer

    try:
        settings = settings_from_args(args)
    except ConfigError as exc:  # a bad flag or VQA_* variable is the operator's input: exit 2
        if args.debug:
            raise
        print(f"vqa: error: {exc.message}", file=sys.stderr)
        return 2
    configure_logging(args.log_level, settings.server.log_json)
    from vqaserve.replicas import check_workers

    for advice in check_workers(settings):  # refuses --workers N>1 for engines that hold a model
        logging.getLogger("vqaserve.serve").warning(advice)
    s = settings.server
    common: dict[str, Any] = {"host": s.host, "port": s.port, "log_level": args.log_level,
                              "access_log": False,  # our own JSON access log replaces uvicorn's
                              "log_config": None, "timeout_keep_alive": 5,
                              **uvicorn_limits(settings),  # read deadlines, caps, grace
                              **proxy_options(settings)}
    if s.workers > 1:
        _run_workers(args, settings, common)
        return 0
    app = create_app(settings)
    server = GracefulServer(uvicorn.Config(app, **common), drain=app.state.drain)
    startup = app.state.startup

    def stop() -> None:
        server.should_exit = True

    # The model loads behind an open port (server/startup.py). If it cannot load, this process can
    # never answer: stop, so the supervisor (systemd, Kubernetes) sees a failed exit and the error
    # below, rather than a process that stays up unready for good.
    startup.on_failed = stop
    # Drains on SIGTERM/SIGINT (503 to new requests, in-flight ones finish), then exits 0.
    server.run()
    if startup.error is not None:
        raise startup.error  # one line on stderr (cli main), exit 2 or 1
    return 0


def _run_workers(args: argparse.Namespace, settings: Settings, common: dict[str, Any]) -> None:
    """N uvicorn worker processes, each building its app from the environment, sharing one
    Prometheus folder so that /metrics adds up all workers, whichever answers the scrape."""
    import shutil
    import tempfile

    import uvicorn

    # Each worker process builds its own app from the environment: hand the flags over as VQA_*.
    for name in FLAT:
        value = getattr(args, name, None)
        if value is not None:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            os.environ[f"VQA_{name.upper()}"] = text
    if settings.llm.adapters:
        os.environ["VQA_ADAPTERS"] = ",".join(f"{k}={v}" for k, v in settings.llm.adapters.items())
    # Fresh for every run: files left by an earlier run would be added to this one's counts.
    # prometheus_client picks its multiprocess mode when a worker imports it, so set it before.
    folder = tempfile.mkdtemp(prefix="vqa-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    logging.getLogger("vqaserve.serve").info("%d workers share metrics through %s (removed at exit)",
                                             settings.server.workers, folder)
    try:
        uvicorn.run("vqaserve.server.app:create_app_from_env", factory=True, workers=settings.server.workers,
                    **common)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def proxy_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's X-Forwarded-For handling: only from VQA_FORWARDED_ALLOW_IPS, never by default.

    uvicorn on its own trusts 127.0.0.1 (or $FORWARDED_ALLOW_IPS); then anything that connects over
    loopback (an SSH tunnel, a sidecar, another user) could pick the address that rate limits and logs see.
    """
    ips = settings.server.forwarded_allow_ips
    return {"proxy_headers": bool(ips), "forwarded_allow_ips": list(ips) if ips else None}

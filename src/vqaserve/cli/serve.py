"""`vqa serve`: the HTTP service on uvicorn. Every flat VQA_* setting is also a flag.

The flags are generated from `settings.FLAT`, so a new public setting becomes a flag by itself:
VQA_MAX_PIXELS <-> --max-pixels, VQA_FETCH_ALLOW_PRIVATE <-> --fetch-allow-private. This module turns
flags into Settings; starting the service is the library's (server/bootstrap.py).
"""

from __future__ import annotations

import argparse
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


def run(args: argparse.Namespace) -> int:
    from vqaserve.errors import ConfigError
    from vqaserve.server.bootstrap import serve

    try:
        settings = settings_from_args(args)
    except ConfigError as exc:  # a bad flag or VQA_* variable is the operator's input: exit 2
        if args.debug:
            raise
        print(f"vqa: error: {exc.message}", file=sys.stderr)
        return 2
    serve(settings, args.log_level, worker_env(args))  # a model that cannot load: raised, one line, exit != 0
    return 0


def worker_env(args: argparse.Namespace) -> dict[str, str]:
    """The flags given, as the VQA_* variables that `--workers N` processes read their settings from."""
    out = {}
    for name in FLAT:
        value = getattr(args, name, None)
        if value is not None:
            out[f"VQA_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return out

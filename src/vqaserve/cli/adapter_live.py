"""`vqa adapter load|unload|route|list`: adapters and canary routes on a running service, through its
admin API (server/routes_admin.py). Each command goes to every `--url` in turn (one per replica) and
stops at the first that refuses it. The admin key comes from --admin-key or VQA_ADMIN_KEY."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from vqaserve.errors import EngineFailure, InvalidRequest, VQAError

DEFAULT_URL = "http://127.0.0.1:8000"
KEY_ENV = "VQA_ADMIN_KEY"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    load = sub.add_parser("load", help="load an adapter into a running service, or reload it with new weights",
                          description="Requests in flight finish on the weights they started with; new ones get "
                                      "these. Through vLLM, PATH is read by the vLLM server. Example: vqa adapter "
                                      "load v2 /srv/adapters/v2 --url http://127.0.0.1:8000")
    load.add_argument("name", help="the name clients send as `model`")
    load.add_argument("path", help="the adapter directory (`vqa train --lora`'s output) as the server reads it")
    unload = sub.add_parser("unload", help="stop serving an adapter (requests in flight finish on it)")
    unload.add_argument("name")
    route = sub.add_parser("route", help="answer a share of a model's requests with another (a canary)",
                           description="Sticky per picture: a follow-up about the same photo gets the same model. "
                                       "Example: vqa adapter route shop-toy --to v2:10, later --to v2:100, then "
                                       "--off.")
    route.add_argument("model", help="the model clients ask for")
    what = route.add_mutually_exclusive_group(required=True)
    what.add_argument("--to", action="append", metavar="TARGET:PERCENT",
                      help="send PERCENT of the requests to TARGET (repeatable)")
    what.add_argument("--off", action="store_true", help="remove the route: the model answers all its requests")
    listing = sub.add_parser("list", help="the adapters a running service serves, their versions and routes")
    listing.add_argument("--json", action="store_true", help="print the admin API's JSON")
    for p, run in ((load, run_load), (unload, run_unload), (route, run_route), (listing, run_list)):
        p.add_argument("--url", action="append", metavar="URL",
                       help=f"the service (repeat for each replica; default {DEFAULT_URL})")
        p.add_argument("--admin-key", metavar="KEY",
                       help=f"an admin key of the server (VQA_ADMIN_KEYS); default: ${KEY_ENV}")
        p.set_defaults(func=run)


def run_load(args: argparse.Namespace) -> int:
    for url in _urls(args):
        out = _call(args, url, "POST", "/admin/adapters", {"name": args.name, "path": args.path})
        was = f" (replaced {out['replaced']}, which finishes the requests already admitted)" if out["replaced"] else ""
        print(f"{url}: {args.name} {out['status']} as {out['version']}{was}")
    return 0


def run_unload(args: argparse.Namespace) -> int:
    for url in _urls(args):
        out = _call(args, url, "DELETE", f"/admin/adapters/{args.name}")
        print(f"{url}: {args.name} unloaded (version {out['version']}; requests in flight finish on it)")
    return 0


def run_route(args: argparse.Namespace) -> int:
    shares = {} if args.off else dict(_share(text) for text in args.to)
    for url in _urls(args):
        if args.off:
            _call(args, url, "DELETE", f"/admin/routes/{args.model}")
            print(f"{url}: {args.model} answers all its requests again")
            continue
        out = _call(args, url, "PUT", f"/admin/routes/{args.model}", {"to": shares})
        rest = 100.0 - sum(out["to"].values())
        parts = [f"{p:g}% -> {t}" for t, p in out["to"].items()] + ([f"{rest:g}% -> {args.model}"] if rest > 0 else [])
        print(f"{url}: requests for {args.model}: {', '.join(parts)}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    for url in _urls(args):
        out = _call(args, url, "GET", "/admin/adapters")
        if args.json:
            print(json.dumps(out, indent=2))
            continue
        print(f"{url}: base model {out['model']}" + ("" if out["adapters"] else ", no adapters"))
        rows = [("ADAPTER", "VERSION", "STATE", "IN FLIGHT", "PATH")]
        rows += [(a["name"], a["version"], a["state"], str(a["in_flight"]), a["path"] or "(start-up)")
                 for a in out["adapters"]]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows[:1] * bool(out["adapters"]) + rows[1:]:
            print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        for r in out["routes"]:
            print(f"  route {r['model']}: " + ", ".join(f"{p:g}% -> {t}" for t, p in r["to"].items()))
    return 0


def _urls(args: argparse.Namespace) -> list[str]:
    return [u.rstrip("/") for u in (args.url or [DEFAULT_URL])]


def _share(text: str) -> tuple[str, float]:
    target, sep, percent = text.rpartition(":")
    try:
        value = float(percent)
    except ValueError:
        value = -1.0
    if not sep or not target or not 0 < value <= 100:
        raise InvalidRequest(f"--to {text!r}: give TARGET:PERCENT with a percentage above 0 and at most 100, "
                             "e.g. --to v2:10")
    return target, value


def _call(args: argparse.Namespace, url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    import httpx

    key = args.admin_key or os.environ.get(KEY_ENV)
    if not key:
        raise InvalidRequest(f"no admin key: set {KEY_ENV} (or pass --admin-key) to a key of the server's "
                             "VQA_ADMIN_KEYS")
    try:
        resp = httpx.request(method, url + path, json=body, timeout=300,
                             headers={"Authorization": f"Bearer {key}"})
    except httpx.HTTPError as exc:
        raise EngineFailure(f"cannot reach {url} ({type(exc).__name__}); is `vqa serve` running there?") from None
    try:
        data = resp.json()
    except ValueError:
        data = None
    if resp.status_code == 200 and isinstance(data, dict):
        return data
    message = data.get("error", {}).get("message") if isinstance(data, dict) else None
    error: VQAError = (InvalidRequest if resp.status_code < 500 else EngineFailure)(
        f"{url}: {message or f'HTTP {resp.status_code}'}")
    raise error

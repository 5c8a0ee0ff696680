"""`vqa doctor`: versions, devices, the engine's placement and whether the model fits, with fixes."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    p = sub.add_parser("doctor", help="check this machine can serve the model (and how to fix it)",
                       description="Print versions, devices, the placement the engine would choose and "
                                   "whether the configured model fits in memory, with a fix per problem.")
    p.add_argument("--model", help="model dir, hub id or bundled name (default: VQA_MODEL or shop-toy)")
    p.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vqaserve.doctor import diagnose, render, to_json
    from vqaserve.settings import load_settings

    report = diagnose(load_settings(model=args.model))
    print(to_json(report) if args.json else render(report))
    return 0 if report.ok else 1

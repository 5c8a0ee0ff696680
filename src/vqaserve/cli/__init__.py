"""The `vqa` command: a thin layer over the library. One module per subcommand.

Errors are one line on stderr and exit code 2 (bad input) or 1 (anything else); `--debug` shows
the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from vqaserve import __version__
from vqaserve.errors import VQAError

# Each module defines register(subparsers) and sets `func` on its parser.
SUBCOMMANDS = ["ask", "serve", "data", "train", "eval", "bench", "doctor", "adapter", "model"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqa", description="Answer questions about images.")
    parser.add_argument("--version", action="version", version=f"vqaserve {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"vqaserve.cli.{name}")
        except ModuleNotFoundError as exc:  # a subcommand still being written on another branch
            if exc.name != f"vqaserve.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("vqa: interrupted", file=sys.stderr)
        return 130
    except VQAError as exc:
        if args.debug:
            raise
        print(f"vqa: error: {exc.message}", file=sys.stderr)
        return 2 if 400 <= exc.status < 500 else 1
    except Exception as exc:  # noqa: BLE001 - last line of defence for a CLI
        if args.debug:
            raise
        print(f"vqa: error: {type(exc).__name__}: {exc} (run with --debug for details)", file=sys.stderr)
        return 1

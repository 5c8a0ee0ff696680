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
SUBCOMMANDS = ["ask", "serve", "data", "train", "eval", "bench", "doctor", "adapter", "capture", "model"]


class BrokenSubcommand(Exception):
    """A subcommand module that cannot be imported or registered: a broken install, never skipped."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqa", description="Answer questions about images.")
    parser.add_argument("--version", action="version", version=f"vqaserve {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            importlib.import_module(f"vqaserve.cli.{name}").register(sub)
        except Exception as exc:  # noqa: BLE001 - reported by main() as one line
            raise BrokenSubcommand(f"the subcommand {name!r} could not be loaded ({type(exc).__name__}: {exc}); "
                                   "reinstall vqaserve (pip install -e .), or run with --debug for the "
                                   "traceback") from exc
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except BrokenSubcommand as exc:
        if "--debug" in (sys.argv[1:] if argv is None else argv):
            raise
        print(f"vqa: error: {exc}", file=sys.stderr)
        return 1
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

"""`vqa data synth`: write a split of the synthetic shop catalogue as data.jsonl + images/."""

from __future__ import annotations

import argparse
import sys
import time

from vqaserve.errors import InvalidRequest
from vqaserve.train.synthetic import SPLITS, TASKS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="make datasets (the synthetic shop catalogue)")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    s = data_sub.add_parser("synth", help="render a split of the synthetic shop catalogue",
                            description="Write DIR/data.jsonl and DIR/images/ (one picture per question; "
                                        "question types and languages cycle evenly).")
    s.add_argument("--split", required=True, choices=list(SPLITS),
                   help="paraphrase: test pictures asked in the held-out wordings")
    s.add_argument("--task", choices=list(TASKS), default="qa",
                   help="qa: the catalogue's seven question types; json: the attributes as JSON (lines carry "
                        "the schema); unanswerable: questions a photo cannot answer")
    s.add_argument("--n", type=int, required=True, help="number of questions (= pictures)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    from vqaserve.train.synthetic import write_split

    if args.n < 1:
        raise InvalidRequest("--n must be at least 1")
    started = time.perf_counter()
    path = write_split(args.split, args.n, args.seed, args.out, progress=not args.quiet, task=args.task)
    seconds = time.perf_counter() - started
    print(f"wrote {args.n} questions to {path} in {seconds:.1f} s ({args.n / seconds * 60:.0f} pictures/min)",
          file=sys.stderr)
    print(path)
    return 0

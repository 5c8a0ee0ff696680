"""`vqa data synth`: write a split of the synthetic shop catalogue as data.jsonl + images/.
`vqa data export`: rated captured answers as data.jsonl + holdout.jsonl + images/ (capture/export.py)."""

from __future__ import annotations

import argparse
import sys
import time

from vqaserve.cli.capture import parse_time, parse_until
from vqaserve.errors import InvalidRequest
from vqaserve.train.synthetic import SPLITS, TASKS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="make datasets (the synthetic shop catalogue, rated captured answers)")
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
    e = data_sub.add_parser(
        "export", help="rated captured answers as training data (for vqa train and vqa eval)",
        description="Write DIR/data.jsonl, DIR/holdout.jsonl, DIR/images/ and DIR/export.json from the capture "
                    "database: corrections as answers, thumbs-up answers kept, thumbs-down without a correction "
                    "dropped, unrated answers left out; one picture and one question per line, one line per "
                    "(picture, question) (the newest rating wins); the held-out slice split by picture.")
    e.add_argument("--capture", metavar="URL", help="sqlite:///PATH or postgresql://... (default: VQA_CAPTURE_URL)")
    e.add_argument("--out", required=True, help="output directory (new)")
    e.add_argument("--since", type=parse_time, metavar="DATE",
                   help="answers captured at or after DATE (UTC, e.g. 2026-12-01)")
    e.add_argument("--until", type=parse_until, metavar="DATE", help="answers captured before DATE's end (UTC)")
    e.add_argument("--holdout", type=float, default=0.2, help="share of pictures held out (default 0.2; 0: none)")
    e.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    e.set_defaults(func=run_export)


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


def run_export(args: argparse.Namespace) -> int:
    import shlex

    from vqaserve.capture.export import export
    from vqaserve.cli.capture import with_store

    command = "vqa " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = with_store(args.capture, lambda store: export(store, args.out, since=args.since, until=args.until,
                                                           holdout=args.holdout, seed=args.seed, command=command))
    counts = result.info["counts"]
    kept = ", ".join(f"{n} {kind}" for kind, n in sorted(counts["kept"].items()))
    dropped = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in counts["dropped"].items() if n) or "none"
    print(f"exported {result.train} training and {result.holdout} held-out question(s) to {args.out} ({kept}); "
          f"dropped: {dropped}; {counts['unrated_left_out']} unrated answer(s) left out", file=sys.stderr)
    print(result.out / "data.jsonl")
    return 0

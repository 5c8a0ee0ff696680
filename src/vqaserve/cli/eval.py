"""`vqa eval`: exact-match accuracy by question type and language, through the service's pipeline."""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vqaserve.errors import ConfigError, InvalidRequest
from vqaserve.eval.compare import add_arguments as add_compare_arguments
from vqaserve.eval.compare import run_from_args as run_compare
from vqaserve.train.questions import PHRASINGS
from vqaserve.train.synthetic import SPLITS, TASKS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="measure exact-match accuracy on a jsonl dataset or a synthetic split",
        description="Every question goes through the same pipeline as `vqa serve`. Examples:\n"
                    "  vqa eval data.jsonl --model shop-toy --out report.json\n"
                    "  vqa eval --synthetic heldout --n 1000 --seed 1\n"
                    "  vqa eval --synthetic adapter --n 1000 --adapter shop-toy-sunglasses\n"
                    "  vqa eval --synthetic test --task json        # attributes as JSON, with response_format\n"
                    "  vqa eval --synthetic paraphrase --task unanswerable\n"
                    "  vqa eval --compare shop-toy shop-toy-sunglasses --data holdout.jsonl --data test "
                    "--n 200 --max-regression 2",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="?", help="jsonl file: {image, question, answer[, type, lang]} per line")
    p.add_argument("--model", help="model dir, hub id or bundled name (default: shop-toy)")
    p.add_argument("--adapter", metavar="NAME[=PATH]",
                   help="answer with this LoRA adapter (bundled name or NAME=PATH)")
    p.add_argument("--engine", choices=["transformers", "upstream", "scripted"])
    p.add_argument("--limit", type=int, help="only the first N questions")
    p.add_argument("--synthetic", choices=list(SPLITS),
                   help="generate this catalogue split on the fly instead of reading DATA "
                        "(paraphrase: test pictures asked in wordings never trained on)")
    p.add_argument("--phrasing", type=int, default=0, choices=range(len(PHRASINGS["category"])),
                   help="with --synthetic: ask in the catalogue's wording N (0 primary, 1-2 the "
                        "training paraphrases; the web page's suggested questions are among them)")
    p.add_argument("--task", choices=list(TASKS), default="qa",
                   help="with --synthetic: qa (the catalogue's seven question types), json (the attributes "
                        "as JSON, asked with the attribute schema as response_format, scored per field) or "
                        "unanswerable (price, stock, sizes, ...: right when answered with the can't-tell "
                        "sentence in the question's language); on paraphrase, in held-out wordings")
    p.add_argument("--n", type=int, default=1000, help="questions to generate with --synthetic")
    p.add_argument("--seed", type=int, default=1, help="seed for --synthetic")
    p.add_argument("--concurrency", type=int, default=16, help="questions in flight (lets the batcher batch)")
    p.add_argument("--out", help="write the JSON report here")
    p.add_argument("--record", metavar="DIR",
                   help="also add the figures to DIR/train.json under 'eval' (DIR: a model or adapter dir, "
                        "or a bundled model's name)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_compare_arguments(p)  # --compare BASE CANDIDATE --data ... --max-regression (eval/compare.py)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.compare:
        return run_compare(args)
    from vqaserve.cli.ask import _adapters
    from vqaserve.eval import calibration
    from vqaserve.eval.harness import format_table, items_from_jsonl
    from vqaserve.settings import load_settings

    if bool(args.data) == bool(args.synthetic):
        raise InvalidRequest("give either DATA.jsonl or --synthetic SPLIT (with --n and --seed)")
    if args.limit is not None and args.limit < 1:
        raise InvalidRequest("--limit must be at least 1")
    if args.task != "qa" and (args.phrasing or not args.synthetic):
        raise InvalidRequest("--task asks a synthetic split (--synthetic SPLIT) in its own wordings: "
                             "leave out --phrasing (--synthetic paraphrase asks held-out wordings)")
    adapters, chosen = _adapters([args.adapter] if args.adapter else [])
    settings = load_settings(model=args.model, engine=args.engine, adapters=adapters or None)
    with tempfile.TemporaryDirectory(prefix="vqa-eval-") as tmp:
        if args.synthetic:
            from vqaserve.train.synthetic import write_split

            if args.n < 1:
                raise InvalidRequest("--n must be at least 1")
            data_path = str(write_split(args.synthetic, args.n, args.seed, tmp, progress=not args.quiet,
                                        phrasing=args.phrasing, task=args.task))
        else:
            data_path = args.data
        items = items_from_jsonl(data_path, args.limit)
        summary, model_id = asyncio.run(_evaluate(settings, items, chosen, args.concurrency, not args.quiet))
    wording = f" phrasing={args.phrasing}" if args.synthetic and args.phrasing else ""
    wording += f" task={args.task}" if args.synthetic and args.task != "qa" else ""
    source = (f"synthetic {args.synthetic} n={args.n} seed={args.seed}{wording}" if args.synthetic else args.data)
    title = f"{model_id}{' + ' + chosen if chosen else ''} on {source}"
    print(format_table(summary, title))
    print(calibration.format_summary(summary))
    report = {"command": "vqa " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
              "model": model_id, "adapter": chosen, "data": source,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **summary}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"report written to {args.out}", file=sys.stderr)
    if args.record:
        record(args.record, source, report)
    failed = int(summary.get("failed_requests", 0))
    if failed:  # a score over failed requests is no score: say so, and fail the command
        print(f"error: {failed} of {summary.get('n', len(items))} requests failed (see 'errors' in the table); "
              "the figures above count them as wrong", file=sys.stderr)
        return 1
    return 0


async def _evaluate(settings: Any, items: list[Any], adapter: str | None, concurrency: int,
                    progress: bool) -> tuple[dict[str, Any], str]:
    from vqaserve.eval import calibration
    from vqaserve.eval.harness import evaluate
    from vqaserve.wiring import build_pipeline

    pipeline = build_pipeline(settings)
    await pipeline.engine.start()
    try:
        report = await evaluate(pipeline, items, model=adapter, concurrency=concurrency, progress=progress)
        # how well confidence tells right from wrong, at this server's VQA_REVIEW_BELOW
        return {**report.summary(), **calibration.summary(report.outcomes, settings.capture.review_below)}, \
            pipeline.model_id
    finally:
        await pipeline.engine.close()


def record(directory: str, source: str, report: dict[str, Any]) -> None:
    """Keep the eval figures next to how the model was made (train.json), keyed by data source.
    `directory` may be a bundled model's name, as with --model."""
    from vqaserve.settings import resolve_model_path

    path = Path(resolve_model_path(directory)) / "train.json"
    if not path.is_file():
        raise ConfigError(f"--record: {path} not found; point it at a model or adapter dir made by vqa train")
    info = json.loads(path.read_text(encoding="utf-8"))
    key = source + (f" + {report['adapter']}" if report.get("adapter") else "")
    keep = ("command", "n", "overall", "by_type", "by_lang", "by_field", "refusals", "confidence", "created")
    info.setdefault("eval", {})[key] = {k: report[k] for k in keep if k in report}
    path.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

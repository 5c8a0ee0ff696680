"""`vqa ask IMAGE QUESTION`: one answer from the command line, through the same pipeline as the server."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from vqaserve.confidence import needs_review
from vqaserve.errors import InvalidRequest
from vqaserve.settings import load_settings
from vqaserve.types import GenerationParams, ImageRef, Part, Question, Turn


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ask", help="answer a question about one image",
                       description="Answer QUESTION about IMAGE (a file path or an http(s) URL).")
    p.add_argument("image", help="image file path or http(s) URL")
    p.add_argument("question", help='the question, e.g. "What color is it?"')
    p.add_argument("--model", help="model dir, hub id or bundled name (default: shop-toy)")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME[=PATH]",
                   help="LoRA adapter to answer with: a bundled name or NAME=PATH")
    p.add_argument("--engine", choices=["transformers", "upstream", "scripted"])
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json-schema", metavar="FILE",
                   help="answer as JSON following this JSON Schema file (constrained decoding)")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of the answer (with its "
                                                       "confidence, and review: true under VQA_REVIEW_BELOW)")
    p.set_defaults(func=run)


def image_ref(arg: str) -> ImageRef:
    if arg.startswith(("http://", "https://")):
        return ImageRef(kind="url", payload=arg, name="image")
    if "://" in arg:
        raise InvalidRequest(f"unsupported image location {arg!r}: give a file path or an http(s) URL")
    return ImageRef(kind="path", payload=arg, name=arg)


def _schema(path: str | None) -> str:
    from pathlib import Path

    from vqaserve.engines.structured import schema_from_text

    if path is None:
        return ""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"--json-schema {path}: cannot read it ({type(exc).__name__}); give a "
                             "UTF-8 JSON Schema file") from None
    return schema_from_text(text, f"--json-schema {path}")


def _adapters(values: list[str]) -> tuple[dict[str, str], str | None]:
    from vqaserve.settings import BUNDLED_MODELS

    adapters: dict[str, str] = {}
    chosen = None
    for value in values:
        name, _, path = value.partition("=")
        if not path:
            path = str(BUNDLED_MODELS / name) if (BUNDLED_MODELS / name).is_dir() else name
        adapters[name] = path
        chosen = name
    return adapters, chosen


def run(args: argparse.Namespace) -> int:
    from vqaserve.wiring import build_pipeline

    started = time.perf_counter()
    adapters, chosen = _adapters(args.adapter)
    settings = load_settings(model=args.model, engine=args.engine,
                             adapters=adapters or None)
    gen = settings.generation
    if args.max_new_tokens is not None and not 1 <= args.max_new_tokens <= gen.max_new_tokens_limit:
        raise InvalidRequest(f"--max-new-tokens must be between 1 and {gen.max_new_tokens_limit}")
    params = GenerationParams(
        max_new_tokens=args.max_new_tokens or gen.max_new_tokens,
        temperature=gen.temperature if args.temperature is None else args.temperature,
        top_p=gen.top_p, top_k=gen.top_k, seed=args.seed, json_schema=_schema(args.json_schema))
    question = Question(turns=[Turn(role="user", parts=[Part(image_ref=image_ref(args.image)),
                                                         Part(text=args.question)])],
                        params=params, model=chosen)
    answer = asyncio.run(_ask(settings, question, build_pipeline))
    total_ms = (time.perf_counter() - started) * 1000.0
    if args.json:
        print(json.dumps({"answer": answer.text, "model": answer.model,
                          "finish_reason": answer.finish_reason, "confidence": answer.confidence,
                          "review": needs_review(answer.confidence, settings.capture.review_below),
                          "usage": answer.usage.to_dict(),
                          "timings": {**{k: round(v, 2) for k, v in answer.timings.items()},
                                      "total": round(total_ms, 2)}}, ensure_ascii=False))
    else:
        print(answer.text)
    sys.stdout.flush()
    return 0


async def _ask(settings, question, build_pipeline):
    pipeline = build_pipeline(settings)
    await pipeline.engine.start()
    try:
        return await pipeline.answer(question)
    finally:
        await pipeline.engine.close()

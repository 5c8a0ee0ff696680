"""Do concurrent streams share the model? (issue 22, part 2)

In process, through the pipeline (what `stream: true` on /v1/chat/completions runs): N concurrent
streaming questions about fresh catalogue pictures on the bundled shop-toy model, image safety off,
greedy. Prints req/s, time to first token (p50), the batch sizes the batcher ran, and whether each
joined stream equals the same question answered without streaming (asked afterwards, so the streams
see fresh pictures). Each round uses new pictures; the figures are medians over the rounds.

    .venv/bin/python scripts/measure_stream_batching.py [--model shop-toy] [--streams 16] [--tokens 32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from vqaserve.bench.workload import catalogue_items
from vqaserve.settings import load_settings
from vqaserve.types import GenerationParams, ImageRef, Part, Question, Turn
from vqaserve.wiring import build_pipeline


def question(data: bytes, text: str, tokens: int) -> Question:
    ref = ImageRef(kind="bytes", payload=data, name="image")
    return Question(turns=[Turn(role="user", parts=[Part(image_ref=ref), Part(text=text)])],
                    params=GenerationParams(max_new_tokens=tokens), cache=False)


async def one_stream(pipeline: object, q: Question, t0: float) -> tuple[str, float, float]:
    _, deltas = await pipeline.open_stream(q)  # type: ignore[attr-defined]
    first, text = 0.0, ""
    async for delta in deltas:
        if delta.text and not first:
            first = time.perf_counter() - t0
        text += delta.text
    return text, first, time.perf_counter() - t0


async def main(args: argparse.Namespace) -> dict[str, object]:
    settings = load_settings(model=args.model, safety_image="off", batch_max_size=args.streams)
    pipeline = build_pipeline(settings)
    await pipeline.engine.start()
    rates, ttfts, sizes, differing = [], [], [], 0
    try:
        warm = catalogue_items(1, seed=args.seed + 1)[0]
        await pipeline.answer(question(warm.data, warm.question, args.tokens))
        batcher = pipeline.c.batcher
        for r in range(args.rounds):
            items = catalogue_items(args.streams, seed=args.seed, start=1000 + r * args.streams)
            before = len(batcher.stats.sizes) if batcher is not None else 0
            t0 = time.perf_counter()
            runs = await asyncio.gather(*(one_stream(pipeline, question(i.data, i.question, args.tokens), t0)
                                          for i in items))
            rates.append(args.streams / (time.perf_counter() - t0))
            ttfts.extend(run[1] for run in runs)
            sizes.append(batcher.stats.sizes[before:] if batcher is not None else [])
            plain = [(await pipeline.answer(question(i.data, i.question, args.tokens))).text for i in items]
            differing += sum(run[0] != text for run, text in zip(runs, plain, strict=True))
    finally:
        await pipeline.engine.close()
    return {"model": args.model, "streams": args.streams, "max_new_tokens": args.tokens,
            "rounds": args.rounds, "req_per_s_median": round(statistics.median(rates), 2),
            "req_per_s": [round(x, 2) for x in rates],
            "ttft_p50_s": round(statistics.median(ttfts), 3), "ttft_max_s": round(max(ttfts), 3),
            "batch_sizes": sizes, "same_as_non_streamed": differing == 0, "differing": differing}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shop-toy")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=5)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))

"""`vqa bench stream`: do streams cost more than plain answers? (issues 22 and 28)

`--concurrency` (16) streaming requests at once against as many plain ones, each round on pictures
nobody has seen, plain first in even rounds and streams first in odd ones (so neither always runs on
the warmer process); req/s per round, the median over `--rounds`. Through HTTP (SSE, a server the
bench starts or `--url`) and, unless `--no-in-process`, through the pipeline in this process (what
the route runs, without HTTP and SSE framing): the two ratios locate the difference. Also the time
to the first text, the batch sizes the in-process batcher ran, and whether each joined stream equals
the plain answer to the same question (asked afterwards with the answer cache bypassed).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import TYPE_CHECKING, Any

from vqaserve.bench.config import Result, torch_threads
from vqaserve.bench.load import LoadResult
from vqaserve.bench.report import ratio

if TYPE_CHECKING:
    from vqaserve.bench.scenarios import Bench
    from vqaserve.bench.workload import Item
    from vqaserve.pipeline import Pipeline
    from vqaserve.types import Question

MODES = ("plain", "stream")


def order(round_no: int) -> tuple[str, str]:
    """Which mode goes first in a round: alternating, so neither always follows the other."""
    return MODES if round_no % 2 == 0 else (MODES[1], MODES[0])


async def run(bench: Bench) -> Result:
    cfg = bench.cfg
    c = cfg.top_concurrency
    figures: dict[str, Any] = {}
    details: dict[str, Any] = {"concurrency": c, "rounds": cfg.rounds, "max_new_tokens": cfg.max_new_tokens}
    with bench.server() as (url, _pid):
        await bench.warm(url, c)
        await bench.load(url, bench.fresh_items(c), c, "warm-up streams", stream=True)
        rps: dict[str, list[float]] = {m: [] for m in MODES}
        last: dict[str, LoadResult] = {}
        items: dict[str, list[Item]] = {}
        for r in range(cfg.rounds):
            for mode in order(r):
                items[mode] = bench.fresh_items(c)
                last[mode] = await bench.load(url, items[mode], c, f"{mode} round {r + 1}", stream=mode == "stream")
                rps[mode].append(round(last[mode].rps, 2))
                details[f"http_{mode}_round{r + 1}"] = last[mode].summary()
        check = await bench.load(url, items["stream"], c, "plain answers of the streamed questions", cache=False)
    figures["plain_rps"] = statistics.median(rps["plain"])
    figures["stream_rps"] = statistics.median(rps["stream"])
    figures["stream_over_plain_rps_c16"] = ratio(figures["stream_rps"], figures["plain_rps"])
    figures["stream_first_text_p50_ms"] = last["stream"].ttft(50)
    figures["plain_p50_ms"] = last["plain"].p(50)
    figures["streams_equal_plain"] = [s.answer for s in last["stream"].samples] == [s.answer for s in check.samples]
    details["http_rps"] = rps
    if cfg.in_process:
        with torch_threads(cfg.torch_threads):
            inner = await in_process(bench, c)
        details["in_process"] = inner
        figures["plain_rps_in_process"] = inner["plain_rps"]
        figures["stream_rps_in_process"] = inner["stream_rps"]
        figures["stream_over_plain_rps_c16_in_process"] = ratio(inner["stream_rps"], inner["plain_rps"])
        figures["stream_first_text_p50_ms_in_process"] = inner["first_text_p50_ms"]
        figures["streams_equal_plain_in_process"] = inner["differing"] == 0
    return figures, details


def question(item: Item, tokens: int, cache: bool = False) -> Question:
    from vqaserve.types import GenerationParams, ImageRef, Part, Question, Turn

    ref = ImageRef(kind="bytes", payload=item.data, name="image")
    return Question(turns=[Turn(role="user", parts=[Part(image_ref=ref), Part(text=item.question)])],
                    params=GenerationParams(max_new_tokens=tokens, temperature=0.0), cache=cache)


async def one_stream(pipeline: Pipeline, q: Question, t0: float) -> tuple[str, float | None]:
    """(joined text, seconds from t0 to its first text) of one streamed question."""
    _, deltas = await pipeline.open_stream(q)
    first: float | None = None
    parts: list[str] = []
    async for delta in deltas:
        if delta.text and first is None:
            first = time.perf_counter() - t0
        parts.append(delta.text)
    return "".join(parts), first


async def in_process(bench: Bench, c: int) -> dict[str, Any]:
    """The same rounds through the pipeline the server builds (wiring.build_pipeline), no HTTP."""
    from vqaserve.scheduling.batching import MicroBatcher
    from vqaserve.wiring import build_pipeline

    cfg = bench.cfg
    tokens = cfg.max_new_tokens
    pipeline = build_pipeline(cfg.settings())
    await pipeline.engine.start()
    # The batch sizes it ran (the gate, batching off, has none to show).
    batcher = pipeline.c.batcher if isinstance(pipeline.c.batcher, MicroBatcher) else None
    sizes: dict[str, list[int]] = {m: [] for m in MODES}
    rps: dict[str, list[float]] = {m: [] for m in MODES}
    first: list[float] = []
    differing = 0
    try:
        warm = bench.fresh_items(c)
        await asyncio.gather(*(pipeline.answer(question(i, tokens)) for i in warm))
        for r in range(cfg.rounds):
            for mode in order(r):
                items = bench.fresh_items(c)
                before = len(batcher.stats.sizes) if batcher is not None else 0
                t0 = time.perf_counter()
                if mode == "plain":
                    await asyncio.gather(*(pipeline.answer(question(i, tokens)) for i in items))
                else:
                    runs = await asyncio.gather(*(one_stream(pipeline, question(i, tokens), t0) for i in items))
                rps[mode].append(round(c / (time.perf_counter() - t0), 2))
                sizes[mode].extend(batcher.stats.sizes[before:] if batcher is not None else [])
                if mode == "stream":
                    first.extend(f for _, f in runs if f is not None)
                    plain = await asyncio.gather(*(pipeline.answer(question(i, tokens)) for i in items))
                    differing += sum(text != p.text for (text, _), p in zip(runs, plain, strict=True))
    finally:
        await pipeline.engine.close()
    return {"plain_rps": statistics.median(rps["plain"]), "stream_rps": statistics.median(rps["stream"]),
            "rps": rps, "batch_sizes": sizes, "differing": differing,
            "first_text_p50_ms": round(1000 * statistics.median(first), 1) if first else None}

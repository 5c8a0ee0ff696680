"""Every `vqa bench` scenario: its name, what it measures, its defaults, and the function that runs it.

Imports nothing heavy: `vqa bench --help` lists the scenarios from here, and each runner imports its
module only when it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vqaserve.bench.config import Result

if TYPE_CHECKING:
    from vqaserve.bench.scenarios import Bench


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str  # one line for --help
    run: Callable[[Bench], Coroutine[Any, Any, Result]]
    requests: int = 16  # the --requests default: requests per measurement, or pictures
    concurrency: tuple[int, ...] = (1, 4, 16)
    max_new_tokens: int = 16
    in_all: bool = True  # `vqa bench all`: the five HTTP scenarios docs/benchmarks.md's table comes from


async def _upstream(bench: Bench) -> Result:
    from vqaserve.bench.upstream import UpstreamBench

    return await UpstreamBench(bench.cfg).run()


async def _stream(bench: Bench) -> Result:
    from vqaserve.bench.stream import run

    return await run(bench)


async def _vision_reuse(bench: Bench) -> Result:
    from vqaserve.bench.vision_reuse import run

    return await run(bench)


async def _structured(bench: Bench) -> Result:
    from vqaserve.bench.structured import run

    return await run(bench)


async def _near_duplicates(bench: Bench) -> Result:
    from vqaserve.bench.near_duplicates import run

    return await run(bench)


async def _image_safety(bench: Bench) -> Result:
    from vqaserve.bench.image_safety import run

    return await run(bench)


async def _followups(bench: Bench) -> Result:
    from vqaserve.bench.followups import run

    return await run(bench)


async def _capture(bench: Bench) -> Result:
    from vqaserve.bench.capture_cost import run

    return await run(bench)


async def _adapter_vllm(bench: Bench) -> Result:
    from vqaserve.bench.adapter_vllm import run

    return await run(bench)


async def _story(bench: Bench) -> Result:
    from vqaserve.bench.loop_story import run

    return await run(bench)


async def _story_vllm(bench: Bench) -> Result:
    from vqaserve.bench.loop_story import run_vllm

    return await run_vllm(bench)


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("latency", "p50/p90 at c=1 through HTTP, where the time goes, and the engine in-process",
             lambda b: b.latency()),
    Scenario("throughput", "req/s at c=1/4/16, batching on and off, and the engine's own batch-16",
             lambda b: b.throughput()),
    Scenario("cache", "miss vs L1 and L2 (Redis) hits, and a 70%-repeat replay", lambda b: b.cache()),
    Scenario("photo", "a 12 MP JPEG vs the same picture at 1280x960; preprocessing, ours vs transformers'",
             lambda b: b.photo()),
    Scenario("soak", "server RSS over many distinct pictures", lambda b: b.soak()),
    Scenario("stream", "16 concurrent streams vs 16 concurrent plain requests: req/s, first text, answers",
             _stream, concurrency=(16,), max_new_tokens=32, in_all=False),
    Scenario("vision-reuse", "in process: a follow-up question's generate time vs the first's and the "
             "vision tower's", _vision_reuse, requests=50, concurrency=(1,), max_new_tokens=8, in_all=False),
    Scenario("structured", "answers to the catalogue's attribute schema: valid JSON share, accuracy, "
             "req/s with and without the schema", _structured, requests=200, concurrency=(16,),
             max_new_tokens=96, in_all=False),
    Scenario("near-duplicates", "re-encoded copies of distinct pictures: hit rate and false hits",
             _near_duplicates, requests=2000, in_all=False),
    Scenario("image-safety", "the image check on catalogue pictures: cost per image, false positives",
             _image_safety, requests=1000, in_all=False),
    Scenario("upstream", "a real vLLM direct vs through a gateway", _upstream, concurrency=(1, 16),
             in_all=False),
    Scenario("followups", "a real vLLM behind a gateway: follow-up question vs first, vLLM's multimodal "
             "cache hits", _followups, requests=40, concurrency=(1,), in_all=False),
    Scenario("capture", "what capturing answers (VQA_CAPTURE_URL) adds per request: the hook's time, p50 on vs "
             "off", _capture, concurrency=(1,), in_all=False),
    Scenario("adapter-vllm", "a LoRA adapter's greedy answers in a real vLLM vs in process",
             _adapter_vllm, requests=200, concurrency=(8,), in_all=False),
    Scenario("story", "the learning loop end to end in process: sunglasses questions captured, corrected, exported, "
             "an adapter trained, gated and put live on 10% then all traffic while clients ask",
             _story, requests=200, concurrency=(4,), max_new_tokens=64, in_all=False),
    Scenario("story-vllm", "the same story through a gateway in front of a real vLLM (runtime LoRA)",
             _story_vllm, requests=200, concurrency=(4,), max_new_tokens=64, in_all=False),
]}

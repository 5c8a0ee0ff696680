"""`vqa bench followups`: through a gateway to a real vLLM, is the second question about a photo cheaper?

vLLM (started as `vqa bench upstream` starts it: scripts/vllm.sh, the bundled shop-toy, no adapters,
so its multimodal processor cache is on; or `--upstream-url`) with a gateway in front. For
`--requests` fresh catalogue pictures, question 1 then question 2, one request at a time, answer cache
bypassed: p50 of each, their ratio, and vLLM's multimodal-cache queries and hits over the run (the
gateway names each picture by its content hash, so every follow-up should be a hit). What a hit skips
is vLLM's decoding and preprocessing of the picture, not its vision encoder (docs/deploy.md).
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Any

from vqaserve.bench.config import Result
from vqaserve.bench.report import ratio

if TYPE_CHECKING:
    from vqaserve.bench.scenarios import Bench

QUESTIONS = ("What is this product?", "What color is it?")
QUERIES, HITS = "vllm:mm_cache_queries_total", "vllm:mm_cache_hits_total"


async def vllm_metrics(client: Any, url: str) -> dict[str, float]:
    from vqaserve.bench.vllm_server import parse_prometheus

    return parse_prometheus((await client.get(f"{url}/metrics")).text)


async def run(bench: Bench) -> Result:
    import httpx

    from vqaserve.bench import workload
    from vqaserve.bench.procs import ServerProcess
    from vqaserve.bench.upstream import UpstreamBench

    cfg = bench.cfg
    pair = UpstreamBench(cfg)
    items = workload.catalogue_items(cfg.requests + 4, seed=cfg.seed, start=120_000)
    times: dict[str, list[float]] = {q: [] for q in QUESTIONS}
    with pair.vllm() as (vllm_url, _pid, model), ServerProcess(pair.gateway_env(vllm_url)) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=300) as client:

            async def ask(item: workload.Item, question: str) -> float:
                body = workload.chat_request(item.data, item.mime, question, model, cfg.max_new_tokens, cache=False)
                t0 = time.perf_counter()
                resp = await client.post("/v1/chat/completions", json=body)
                resp.raise_for_status()
                return 1000 * (time.perf_counter() - t0)

            for item in items[:4]:  # warm-up
                await ask(item, QUESTIONS[0])
            before = await vllm_metrics(client, vllm_url)
            for item in items[4:]:
                for question in QUESTIONS:
                    times[question].append(await ask(item, question))
            after = await vllm_metrics(client, vllm_url)
    q1, q2 = (round(statistics.median(times[q]), 1) for q in QUESTIONS)
    queries = after.get(QUERIES, 0.0) - before.get(QUERIES, 0.0)
    hits = after.get(HITS, 0.0) - before.get(HITS, 0.0)
    figures: dict[str, Any] = {"q1_p50_ms": q1, "q2_p50_ms": q2, "followup_q2_over_q1_p50": ratio(q2, q1),
                               "vllm_mm_cache_queries": queries, "vllm_mm_cache_hits": hits,
                               "vllm_mm_cache_hits_per_followup": ratio(hits, len(items) - 4)}
    return figures, {"pictures": len(items) - 4, "questions": QUESTIONS, "model": model, "ms": times}

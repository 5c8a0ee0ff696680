"""Follow-up questions through the gateway to a real vLLM: is the second question about a photo cheaper?

Starts vLLM (scripts/vllm.sh, bundled shop-toy, no adapters so its multimodal processor cache is on)
and a gateway in front of it; for N fresh catalogue pictures asks question 1 then question 2, one
request at a time, and prints the p50 latency of each, their ratio, and vLLM's multimodal-cache hits.

    .venv/bin/python scripts/measure_followups_vllm.py --pictures 40
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import time

import httpx

from vqaserve.bench import workload
from vqaserve.bench.procs import ServerProcess
from vqaserve.bench.upstream import UpstreamBench
from vqaserve.bench.vllm_server import VllmServer

QUESTIONS = ("What is this product?", "What color is it?")


def body(item: workload.Item, question: str) -> dict[str, object]:
    uri = f"data:{item.mime};base64,{base64.b64encode(item.data).decode()}"
    return {"model": "shop-toy", "temperature": 0, "max_tokens": 16, "cache": False,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                                      {"type": "text", "text": question}]}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pictures", type=int, default=40)
    args = parser.parse_args()
    items = workload.catalogue_items(args.pictures + 4, seed=3, start=120_000)
    bench = UpstreamBench(upstream_url=None, upstream_pid=None, model_dir=None, env={}, requests=0,
                          concurrency=[], max_new_tokens=16, seed=0, photo_pairs=0, progress=False)
    with VllmServer() as vllm, ServerProcess(bench.gateway_env(vllm.url)) as gateway, \
            httpx.Client(base_url=gateway.url, timeout=60) as client:
        for item in items[:4]:  # warm-up
            client.post("/v1/chat/completions", json=body(item, QUESTIONS[0]))
        first, second = [], []
        before = vllm.metrics()
        for item in items[4:]:
            for question, times in zip(QUESTIONS, (first, second), strict=True):
                t0 = time.perf_counter()
                resp = client.post("/v1/chat/completions", json=body(item, question))
                resp.raise_for_status()
                times.append(1000 * (time.perf_counter() - t0))
        after = vllm.metrics()
    key_q, key_h = "vllm:mm_cache_queries_total", "vllm:mm_cache_hits_total"
    p1, p2 = statistics.median(first), statistics.median(second)
    print(json.dumps({"pictures": args.pictures, "q1_p50_ms": round(p1, 1), "q2_p50_ms": round(p2, 1),
                      "q2_over_q1": round(p2 / p1, 3),
                      "mm_cache_queries": after[key_q] - before[key_q], "mm_cache_hits": after[key_h] - before[key_h]},
                     indent=2))


if __name__ == "__main__":
    main()

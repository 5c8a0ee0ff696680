"""A small closed-loop load generator for OpenAI-compatible chat endpoints (a gateway or vLLM itself).

    python scripts/loadgen.py --url http://127.0.0.1:8000/v1 --model NAME --requests 640 --concurrency 32

Every request carries the same image (already at the pixel budget, so the gateway's resize is a no-op
and both targets see the same work) and a question made unique by its index, so the gateway's answer
cache never hits: the comparison measures the gateway's per-request overhead, not its cache. Prints
one JSON line: requests/s, latency percentiles, errors.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import statistics
import sys
import time

import httpx
from PIL import Image


def test_image(width: int, height: int) -> str:
    """A deterministic photo-like picture as a data URI (PNG, so nothing is lost on the way)."""
    img = Image.merge("RGB", [Image.linear_gradient("L").resize((width, height)),
                              Image.radial_gradient("L").resize((width, height)),
                              Image.linear_gradient("L").rotate(90).resize((width, height))])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def body(model: str, image: str, index: int, max_tokens: int) -> dict[str, object]:
    return {"model": model, "max_tokens": max_tokens, "temperature": 0.0,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": image}},
                {"type": "text", "text": f"Question {index}: what colour is the product?"}]}]}


async def run(args: argparse.Namespace) -> dict[str, object]:
    image = test_image(args.width, args.height)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(args.warmup + args.requests))

    async with httpx.AsyncClient(base_url=args.url.rstrip("/") + "/", headers=headers, limits=limits,
                                 timeout=args.timeout) as client:
        async def one(index: int, record: bool) -> None:
            t0 = time.perf_counter()
            try:
                resp = await client.post("chat/completions", json=body(args.model, image, index,
                                                                       args.max_tokens))
                ok = resp.status_code == 200
                key = str(resp.status_code)
            except httpx.HTTPError as exc:
                ok, key = False, type(exc).__name__
            if record:
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors[key] = errors.get(key, 0) + 1

        async def worker(record_from: int) -> None:
            for index in counter:
                await one(index, index >= record_from)

        # Warm-up: connections, CUDA graphs, caches; not measured.
        warm = [one(next(counter), False) for _ in range(args.warmup)]
        await asyncio.gather(*warm)
        started = time.perf_counter()
        await asyncio.gather(*(worker(args.warmup) for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - started

    latencies.sort()

    def pct(p: float) -> float:
        return round(1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))], 1) if latencies else 0.0

    return {"label": args.label, "url": args.url, "requests": args.requests, "ok": len(latencies),
            "errors": errors, "concurrency": args.concurrency, "seconds": round(elapsed, 3),
            "requests_per_s": round(len(latencies) / elapsed, 2) if elapsed else 0.0,
            "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99),
            "mean_ms": round(1000 * statistics.fmean(latencies), 1) if latencies else 0.0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="OpenAI API root, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", required=True)
    p.add_argument("--label", default="run")
    p.add_argument("--requests", type=int, default=640)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--warmup", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--width", type=int, default=512, help="multiple of 32, within the pixel budget")
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--api-key", default=None)
    p.add_argument("--json-out", default=None, help="also write the result to this file")
    args = p.parse_args(argv)
    result = asyncio.run(run(args))
    line = json.dumps(result)
    print(line)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(line + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

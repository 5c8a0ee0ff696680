"""Closed-loop load on any OpenAI-compatible chat endpoint (a gateway or vLLM itself), for gpu-check.sh.

    python scripts/loadgen.py --url http://127.0.0.1:8000/v1 --model NAME --requests 640 --concurrency 32

It runs where only the gateway's dependencies are installed (scripts/gpu-check.sh on a bare GPU
machine), which is why it is a script and not a `vqa bench` scenario; the load itself is `vqa bench`'s
(vqaserve.bench.load.run_load). Every request carries the same image (already at the pixel budget, so
the gateway's resize is a no-op and both targets see the same work) and a question made unique by its
index, so the gateway's answer cache never hits: the comparison measures the gateway's per-request
overhead, not its cache. Prints one JSON line: requests/s, latency percentiles, errors.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys

from PIL import Image

from vqaserve.bench.load import LoadResult, run_load
from vqaserve.bench.workload import chat_request


def test_image(width: int, height: int) -> bytes:
    """A deterministic photo-like picture (PNG, so nothing is lost on the way)."""
    img = Image.merge("RGB", [Image.linear_gradient("L").resize((width, height)),
                              Image.radial_gradient("L").resize((width, height)),
                              Image.linear_gradient("L").rotate(90).resize((width, height))])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def bodies(model: str, image: bytes, n: int, max_tokens: int) -> list[bytes]:
    return [json.dumps(chat_request(image, "image/png", f"Question {index}: what colour is the product?", model,
                                    max_tokens)).encode() for index in range(n)]


async def run(args: argparse.Namespace) -> dict[str, object]:
    every = bodies(args.model, test_image(args.width, args.height), args.warmup + args.requests, args.max_tokens)

    async def load(part: list[bytes], concurrency: int) -> LoadResult:
        return await run_load(args.url.rstrip("/"), part, concurrency, progress=False, api_key=args.api_key,
                              timeout_s=args.timeout, path="/chat/completions")  # under the API root

    if args.warmup:  # connections, CUDA graphs, caches; not measured
        await load(every[:args.warmup], args.warmup)
    result = await load(every[args.warmup:], args.concurrency)
    summary = result.summary()
    return {"label": args.label, "url": args.url, "requests": args.requests, "ok": summary["ok"],
            "errors": summary["errors"], "concurrency": args.concurrency, "seconds": summary["wall_s"],
            "requests_per_s": round(result.rps, 2), "p50_ms": summary["p50_ms"], "p95_ms": result.p(95),
            "p99_ms": summary["p99_ms"], "mean_ms": summary["mean_ms"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
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

#!/usr/bin/env python3
"""Latency of one `/v1/chat/completions` call on a running server, and how it splits across stages.

    python scripts/http_latency.py --url http://127.0.0.1:8000 --n 20

Sends N sequential requests (one catalogue picture + question, temperature 0, `cache: false` so
every call really generates), reports client-side p50/p90 and, from the server's `/metrics` stage
histograms (before/after deltas), the mean milliseconds per request spent in each stage.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import sys
import time
from typing import Any

import httpx

from vqaserve.bench.load import parse_stage_totals, stage_means_ms


def picture() -> tuple[bytes, str]:
    """A catalogue picture when the synthetic renderer is installed, else a plain drawn one."""
    try:
        from vqaserve.train import synthetic

        sample = synthetic.make_sample("test", 0, 1, qtype="color", lang="en")
        return synthetic.png_bytes(sample.image), sample.question
    except ImportError:
        from PIL import Image, ImageDraw

        img = Image.new("RGB", (320, 240), (230, 230, 230))
        ImageDraw.Draw(img).rectangle((80, 60, 240, 180), fill=(30, 30, 30))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue(), "What color is it?"


def stage_totals(client: httpx.Client) -> dict[str, tuple[float, float]]:
    """stage -> (seconds, count) from the server's vqa_stage_seconds histogram."""
    return parse_stage_totals(client.get("/metrics").text)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--model", default=None)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    data, question = picture()
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    body: dict[str, Any] = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": question}]}],
        "temperature": 0, "max_tokens": args.max_tokens, "cache": False}
    if args.model:
        body["model"] = args.model
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with httpx.Client(base_url=args.url, timeout=600, headers=headers) as client:
        for _ in range(args.warmup):
            client.post("/v1/chat/completions", json=body).raise_for_status()
        before = stage_totals(client)
        latencies, tokens = [], []
        for _ in range(args.n):
            t0 = time.perf_counter()
            r = client.post("/v1/chat/completions", json=body)
            latencies.append((time.perf_counter() - t0) * 1000.0)
            r.raise_for_status()
            tokens.append(r.json()["usage"]["completion_tokens"])
        after = stage_totals(client)
    stages = stage_means_ms(before, after, args.n)
    report = {"url": args.url, "n": args.n, "p50_ms": round(statistics.median(latencies), 1),
              "p90_ms": round(percentile(latencies, 0.9), 1),
              "mean_ms": round(statistics.fmean(latencies), 1),
              "completion_tokens_mean": round(statistics.fmean(tokens), 1),
              "stage_ms_mean": stages,
              "other_ms_mean": round(statistics.fmean(latencies) - sum(stages.values()), 2)}
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{args.n} requests to {args.url}: p50 {report['p50_ms']} ms, p90 {report['p90_ms']} ms, "
          f"mean {report['mean_ms']} ms, {report['completion_tokens_mean']} tokens out")
    for stage, ms in sorted(stages.items(), key=lambda kv: -kv[1]):
        print(f"  {stage:<11} {ms:>9.2f} ms")
    print(f"  {'http/other':<11} {report['other_ms_mean']:>9.2f} ms  (parsing, routing, network)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does a LoRA adapter answer the same in vLLM as in process? Count equal greedy answers.

    .venv/bin/vqa data synth --split adapter --n 200 --seed 1 --out /tmp/adsplit
    scripts/vllm.sh serve src/vqaserve/models/shop-toy --port 18123 \
        --adapter shop-toy-sunglasses=src/vqaserve/models/shop-toy-sunglasses &
    .venv/bin/python scripts/compare_adapter_vllm.py /tmp/adsplit/data.jsonl --url http://127.0.0.1:18123/v1 \
        --adapter shop-toy-sunglasses=src/vqaserve/models/shop-toy-sunglasses --out /tmp/compare.json

In process: every question through `vqa eval`'s pipeline (transformers engine, the adapter loaded by
PEFT). vLLM: straight to its OpenAI API, `model` = the adapter's vLLM name, the picture as a PNG data
URI already resized to the pipeline's pixel budget (so vLLM's processor keeps it as it is), greedy,
`max_tokens` as eval uses. Exit code 0 when at least --min-equal of the answers are equal.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import sys
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="jsonl: {image, question, answer[, type, lang]} per line (vqa data synth)")
    p.add_argument("--url", required=True, help="vLLM's OpenAI base URL, e.g. http://127.0.0.1:18123/v1")
    p.add_argument("--adapter", required=True, metavar="NAME=PATH",
                   help="the adapter: NAME as vLLM serves it (--lora-modules NAME=PATH), PATH for PEFT")
    p.add_argument("--model", default="shop-toy", help="base model for the in-process side")
    p.add_argument("--limit", type=int, help="only the first N questions")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--min-equal", type=float, default=0.95, help="share of equal answers that passes")
    p.add_argument("--out", help="write the JSON report here")
    args = p.parse_args(argv)
    name, _, path = args.adapter.partition("=")
    if not name or not path:
        p.error("--adapter takes NAME=PATH")
    report = asyncio.run(compare(args.data, args.url, name, path, args.model, args.limit, args.concurrency))
    print(f"equal answers: {report['equal']}/{report['n']} ({report['equal_share']:.1%}); exact match with the "
          f"gold answer: in process {report['accuracy_in_process']:.1%}, vLLM {report['accuracy_vllm']:.1%}")
    for row in report["different"][:20]:
        print(f"  {row['question']!r}: in process {row['in_process']!r}, vLLM {row['vllm']!r}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0 if report["equal_share"] >= args.min_equal else 1


async def compare(data: str, url: str, name: str, path: str, model: str, limit: int | None,
                  concurrency: int) -> dict[str, Any]:
    from vqaserve.eval.harness import evaluate, is_correct, items_from_jsonl
    from vqaserve.settings import load_settings
    from vqaserve.wiring import build_pipeline

    items = items_from_jsonl(data, limit)
    settings = load_settings(model=model, engine="transformers", adapters={name: path})
    pipeline = build_pipeline(settings)
    await pipeline.engine.start()
    try:
        budget = pipeline.budget()
        local = await evaluate(pipeline, items, model=name, concurrency=concurrency, progress=False)
    finally:
        await pipeline.engine.close()
    remote = await _ask_vllm(url, name, items, budget, concurrency)
    rows = [{"question": o.item.question, "image": o.item.image, "gold": o.item.answer,
             "in_process": o.prediction.strip(), "vllm": r.strip()}
            for o, r in zip(local.outcomes, remote, strict=True)]
    equal = sum(r["in_process"] == r["vllm"] for r in rows)
    n = len(rows)
    return {"data": data, "adapter": name, "adapter_path": path, "base_model": model, "url": url,
            "pixel_budget": list(budget), "max_tokens": 24, "n": n, "equal": equal, "equal_share": equal / n,
            "accuracy_in_process": sum(is_correct(r["in_process"], r["gold"]) for r in rows) / n,
            "accuracy_vllm": sum(is_correct(r["vllm"], r["gold"]) for r in rows) / n,
            "different": [r for r in rows if r["in_process"] != r["vllm"]], "answers": rows}


async def _ask_vllm(url: str, name: str, items: list[Any], budget: tuple[int, int],
                    concurrency: int) -> list[str]:
    import httpx

    from vqaserve.images.decode import load_image_file

    async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=300) as client:
        served = {m["id"] for m in (await client.get("/models")).json()["data"]}
        if name not in served:
            raise SystemExit(f"vLLM at {url} does not serve {name!r} (it serves {sorted(served)}); "
                             f"start it with --lora-modules {name}=PATH")
        semaphore = asyncio.Semaphore(concurrency)

        async def one(item: Any) -> str:
            picture = load_image_file(item.image, *budget).image  # the pipeline's resize, done here
            buf = io.BytesIO()
            picture.save(buf, format="PNG")
            uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
            body = {"model": name, "temperature": 0.0, "max_tokens": 24, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": item.question}]}]}
            async with semaphore:
                reply = await client.post("/chat/completions", json=body)
            reply.raise_for_status()
            return str(reply.json()["choices"][0]["message"]["content"] or "")

        return list(await asyncio.gather(*(one(item) for item in items)))


if __name__ == "__main__":
    sys.exit(main())

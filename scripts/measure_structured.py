"""Structured output on the catalogue, in process with shop-toy (GitHub issue 22's target).

    .venv/bin/python scripts/measure_structured.py --n 200 --concurrency 16 [--out run.json]
    .venv/bin/python scripts/measure_structured.py --url http://127.0.0.1:8000   # a `vqa serve` gateway
    .venv/bin/python scripts/measure_structured.py --url http://127.0.0.1:8001 --vllm   # vLLM itself

Asks each test picture QUESTION with the attribute schema (category/color/pattern/occasions, enums
from the catalogue) and reports: the share of answers that parse and follow the schema (target
100%), per-attribute accuracy against the picture's spec, and requests/s at the given concurrency,
with the schema and, for comparison, the same pictures asked as free text (the model's own short
answers, and forced to the JSON answers' mean length, which isolates the grammar's cost).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import platform
import sys
import time
from dataclasses import dataclass
from typing import Any

from vqaserve.engines.structured import canonical, response_format_body, violation
from vqaserve.settings import load_settings
from vqaserve.train import catalogue, synthetic
from vqaserve.types import GenerationParams, ImageRef, Part, Question, Turn

SCHEMA: dict[str, Any] = catalogue.attribute_schema()
QUESTION = "Describe this product as JSON."


def gold(spec: catalogue.Spec) -> dict[str, str]:
    return {"category": catalogue.ALL_CATEGORIES[spec.category][0], "color": catalogue.COLOURS[spec.colour][0],
            "pattern": catalogue.PATTERNS[spec.pattern][0],
            "occasion": catalogue.OCCASIONS[catalogue.occasion(spec.category, spec.colour, spec.pattern)][0]}


@dataclass
class Reply:
    text: str
    completion_tokens: int


class InProcess:
    """shop-toy through the service's pipeline, in this process."""

    async def __aenter__(self) -> InProcess:
        from vqaserve.wiring import build_pipeline

        self.pipeline = build_pipeline(load_settings(model="shop-toy", engine="transformers", safety_image="off"))
        await self.pipeline.engine.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pipeline.engine.close()

    async def ask(self, png: bytes, question: str, schema: str, max_tokens: int, ignore_eos: bool) -> Reply:
        q = Question(turns=[Turn(role="user", parts=[Part(image_ref=ImageRef(kind="bytes", payload=png)),
                                                     Part(text=question)])],
                     params=GenerationParams(max_new_tokens=max_tokens, json_schema=schema, ignore_eos=ignore_eos),
                     cache=False)
        answer = await self.pipeline.answer(q)
        return Reply(answer.text, answer.usage.completion_tokens)


class OverHttp:
    """An OpenAI-compatible server: a `vqa serve` gateway, or vLLM itself."""

    def __init__(self, url: str, model: str, gateway: bool) -> None:
        self.url, self.model, self.gateway = url.rstrip("/") + "/v1/chat/completions", model, gateway

    async def __aenter__(self) -> OverHttp:
        import httpx

        self.client = httpx.AsyncClient(timeout=300)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    async def ask(self, png: bytes, question: str, schema: str, max_tokens: int, ignore_eos: bool) -> Reply:
        uri = "data:image/png;base64," + base64.b64encode(png).decode()
        body: dict[str, Any] = {
            "model": self.model, "temperature": 0, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                                      {"type": "text", "text": question}]}]}
        if schema:
            body["response_format"] = response_format_body(schema)
        if ignore_eos:
            body["ignore_eos"] = True
        if self.gateway:
            body["cache"] = False  # the answer cache would answer the timed repeats (vLLM refuses the field)
        resp = await self.client.post(self.url, json=body)
        resp.raise_for_status()
        data = resp.json()
        return Reply(data["choices"][0]["message"]["content"], int(data["usage"]["completion_tokens"]))


async def run(asker: Any, pictures: list[bytes], question: str, schema: str, max_tokens: int,
              concurrency: int, ignore_eos: bool = False) -> tuple[list[Reply], float]:
    gate = asyncio.Semaphore(concurrency)

    async def one(png: bytes) -> Reply:
        async with gate:
            return await asker.ask(png, question, schema, max_tokens, ignore_eos)

    started = time.perf_counter()
    answers = await asyncio.gather(*(one(png) for png in pictures))
    return answers, time.perf_counter() - started


def score(answers: list[Any], specs: list[catalogue.Spec]) -> dict[str, Any]:
    valid, right = 0, dict.fromkeys(("category", "color", "pattern", "occasion"), 0)
    bad: list[str] = []
    for answer, spec in zip(answers, specs, strict=True):
        try:
            value = json.loads(answer.text)
        except ValueError:
            bad.append(answer.text[:120])
            continue
        if violation(value, SCHEMA) is not None:
            bad.append(answer.text[:120])
            continue
        valid += 1
        want = gold(spec)
        for key in ("category", "color", "pattern"):
            right[key] += value[key] == want[key]
        right["occasion"] += want["occasion"] in value["occasions"]
    n = len(answers)
    return {"valid_pct": round(100.0 * valid / n, 1), "valid": valid, "n": n,
            "accuracy_pct": {k: round(100.0 * v / n, 1) for k, v in right.items()},
            "all_three_pct": None, "invalid_examples": bad[:5]}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    samples = list(synthetic.iter_samples("test", args.n, args.seed))
    pictures = [synthetic.png_bytes(s.image) for s in samples]
    specs = [s.spec for s in samples]
    asker = OverHttp(args.url, args.model, not args.vllm) if args.url else InProcess()
    async with asker as server:
        # Warm up: every picture once (decoding and image caches), and the grammar, so each timed run
        # measures generation alone and the order of the runs does not matter.
        await run(server, pictures, args.question, "", 1, args.concurrency)
        await run(server, pictures[:4], args.question, canonical(SCHEMA), args.max_tokens, 4)
        answers, secs = await run(server, pictures, args.question, canonical(SCHEMA), args.max_tokens,
                                  args.concurrency)
        report = score(answers, specs)
        triples = sum(1 for a, s in zip(answers, specs, strict=True) if _all_three(a.text, gold(s)))
        report["all_three_pct"] = round(100.0 * triples / len(answers), 1)
        report["schema_req_per_s"] = round(len(pictures) / secs, 2)
        report["schema_mean_completion_tokens"] = round(
            sum(a.completion_tokens for a in answers) / len(answers), 1)
        if not args.skip_free:
            free, free_secs = await run(server, pictures, "Describe this product.", "", args.max_tokens,
                                        args.concurrency)
            report["free_text_req_per_s"] = round(len(pictures) / free_secs, 2)
            report["free_text_mean_completion_tokens"] = round(
                sum(a.completion_tokens for a in free) / len(free), 1)
            # The same number of tokens as the JSON answers, without a grammar: the mask's own cost.
            same = round(report["schema_mean_completion_tokens"])
            _, same_secs = await run(server, pictures, "Describe this product.", "", same, args.concurrency,
                                     ignore_eos=True)
            report["free_text_same_length_req_per_s"] = round(len(pictures) / same_secs, 2)
    report.update({"command": " ".join(sys.argv), "question": args.question, "split": "test",
                   "seed": args.seed, "concurrency": args.concurrency, "max_tokens": args.max_tokens,
                   "model": args.model, "engine": ("vllm" if args.vllm else "gateway") if args.url else "transformers",
                   "url": args.url, "device": "cpu",
                   "python": platform.python_version()})
    return report


def _all_three(text: str, want: dict[str, str]) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, dict) and all(value.get(k) == want[k] for k in ("category", "color", "pattern"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument("--url", help="ask this OpenAI-compatible server instead of shop-toy in process")
    parser.add_argument("--vllm", action="store_true", help="--url is vLLM itself, not a vqa gateway")
    parser.add_argument("--model", default="shop-toy", help="the model name to send with --url")
    parser.add_argument("--skip-free", action="store_true", help="skip the free-text throughput run")
    parser.add_argument("--out", help="also write the report here (JSON)")
    args = parser.parse_args()
    result = asyncio.run(main(args))
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")

"""`vqa bench structured`: answers to the catalogue's attribute schema (issue 22).

Asks each of `--requests` test-split catalogue pictures QUESTION with the attribute schema
(category/color/pattern/occasions, enums from the catalogue) and reports the share of answers that
parse and follow the schema (target 100%), per-attribute accuracy against the picture's spec, and
req/s at `--concurrency`: with the schema, and for comparison the same pictures asked as free text
(the model's own short answers, and forced to the JSON answers' mean length, which isolates the
grammar's cost). In process through the pipeline (default), through a running `vqa serve` (`--url`,
answer cache bypassed), or straight to a vLLM (`--upstream-url`).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from vqaserve.bench.config import BenchConfig, Result, torch_threads

if TYPE_CHECKING:
    from vqaserve.bench.scenarios import Bench
    from vqaserve.train.catalogue import Spec

QUESTION = "Describe this product as JSON."
FREE_QUESTION = "Describe this product."


@dataclass
class Reply:
    text: str
    completion_tokens: int


class Asker(Protocol):
    async def ask(self, png: bytes, question: str, schema: str, max_tokens: int, ignore_eos: bool) -> Reply: ...


class InProcess:
    """The service's pipeline in this process (wiring.build_pipeline), answer cache bypassed."""

    def __init__(self, cfg: BenchConfig) -> None:
        from vqaserve.wiring import build_pipeline

        self.pipeline = build_pipeline(cfg.settings())

    async def ask(self, png: bytes, question: str, schema: str, max_tokens: int, ignore_eos: bool) -> Reply:
        from vqaserve.types import GenerationParams, ImageRef, Part, Question, Turn

        q = Question(turns=[Turn(role="user", parts=[Part(image_ref=ImageRef(kind="bytes", payload=png)),
                                                     Part(text=question)])],
                     params=GenerationParams(max_new_tokens=max_tokens, json_schema=schema,
                                             ignore_eos=ignore_eos), cache=False)
        answer = await self.pipeline.answer(q)
        return Reply(answer.text, answer.usage.completion_tokens)


class OverHttp:
    """An OpenAI-compatible server: a `vqa serve` (gateway or not), or vLLM itself (`vllm`: no `cache`)."""

    def __init__(self, client: Any, model: str | None, vllm: bool) -> None:
        self.client, self.model, self.vllm = client, model, vllm

    async def ask(self, png: bytes, question: str, schema: str, max_tokens: int, ignore_eos: bool) -> Reply:
        from vqaserve.bench.workload import chat_request
        from vqaserve.engines.structured import response_format_body

        extra: dict[str, object] = {}
        if schema:
            extra["response_format"] = response_format_body(schema)
        if ignore_eos:
            extra["ignore_eos"] = True
        if not self.vllm:
            extra["cache"] = False  # the answer cache would answer the repeats (vLLM refuses the field)
        resp = await self.client.post("/v1/chat/completions",
                                      json=chat_request(png, "image/png", question, self.model, max_tokens, **extra))
        resp.raise_for_status()
        data = resp.json()
        return Reply(data["choices"][0]["message"]["content"], int(data["usage"]["completion_tokens"]))


async def timed(asker: Asker, pictures: list[bytes], question: str, schema: str, max_tokens: int,
                concurrency: int, ignore_eos: bool = False) -> tuple[list[Reply], float]:
    gate = asyncio.Semaphore(concurrency)

    async def one(png: bytes) -> Reply:
        async with gate:
            return await asker.ask(png, question, schema, max_tokens, ignore_eos)

    started = time.perf_counter()
    replies = await asyncio.gather(*(one(png) for png in pictures))
    return list(replies), time.perf_counter() - started


def gold(spec: Spec) -> dict[str, str]:
    from vqaserve.train import catalogue as cat

    return {"category": cat.ALL_CATEGORIES[spec.category][0], "color": cat.COLOURS[spec.colour][0],
            "pattern": cat.PATTERNS[spec.pattern][0],
            "occasion": cat.OCCASIONS[cat.occasion(spec.category, spec.colour, spec.pattern)][0]}


def score(texts: list[str], golds: list[dict[str, str]], schema: dict[str, Any]) -> dict[str, Any]:
    """Valid share (parses and follows `schema`) and per-attribute accuracy over all answers."""
    from vqaserve.engines.structured import violation

    valid, triples = 0, 0
    right = dict.fromkeys(("category", "color", "pattern", "occasion"), 0)
    bad: list[str] = []
    for text, want in zip(texts, golds, strict=True):
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if value is None or violation(value, schema) is not None:
            bad.append(text[:120])
            continue
        valid += 1
        for key in ("category", "color", "pattern"):
            right[key] += value[key] == want[key]
        right["occasion"] += want["occasion"] in value["occasions"]
        triples += all(value[k] == want[k] for k in ("category", "color", "pattern"))
    n = len(texts)
    return {"structured_valid_share": round(valid / n, 4), "valid": valid, "n": n,
            "accuracy": {k: round(v / n, 4) for k, v in right.items()}, "all_three": round(triples / n, 4),
            "invalid_examples": bad[:5]}


async def run(bench: Bench) -> Result:
    with torch_threads(bench.cfg.torch_threads if not (bench.cfg.url or bench.cfg.upstream_url) else None):
        return await measure(bench)


async def measure(bench: Bench) -> Result:
    import httpx

    from vqaserve.engines.structured import canonical
    from vqaserve.train import catalogue, synthetic

    cfg = bench.cfg
    schema = catalogue.attribute_schema()
    samples = list(synthetic.iter_samples("test", cfg.requests, cfg.seed))
    pictures = [synthetic.png_bytes(s.image) for s in samples]
    c = cfg.top_concurrency
    target = cfg.upstream_url or cfg.url
    async with httpx.AsyncClient(base_url=(target or "http://unused").rstrip("/").removesuffix("/v1"),
                                 timeout=300) as client:
        asker: Asker
        if target:
            model = cfg.model
            if cfg.upstream_url and not model:  # vLLM wants the name it serves
                model = (await client.get("/v1/models")).json()["data"][0]["id"]
            asker, engine = OverHttp(client, model, vllm=bool(cfg.upstream_url)), target
        else:
            inner = InProcess(cfg)
            asker, engine = inner, "in process"
            await inner.pipeline.engine.start()
        try:
            # Warm-up: every picture once (decoding and image caches), and the grammar, so each timed
            # run measures generation alone and the order of the runs does not matter.
            await timed(asker, pictures, QUESTION, "", 1, c)
            await timed(asker, pictures[:4], QUESTION, canonical(schema), cfg.max_new_tokens, 4)
            replies, secs = await timed(asker, pictures, QUESTION, canonical(schema), cfg.max_new_tokens, c)
            mean_tokens = sum(r.completion_tokens for r in replies) / len(replies)
            free, free_secs = await timed(asker, pictures, FREE_QUESTION, "", cfg.max_new_tokens, c)
            # The same number of tokens as the JSON answers, without a grammar: the grammar's own cost.
            _, same_secs = await timed(asker, pictures, FREE_QUESTION, "", max(1, round(mean_tokens)), c,
                                       ignore_eos=True)
        finally:
            if isinstance(asker, InProcess):
                await asker.pipeline.engine.close()
    scores = score([r.text for r in replies], [gold(s.spec) for s in samples], schema)
    n = len(pictures)
    figures: dict[str, Any] = {
        "structured_valid_share": scores["structured_valid_share"], "all_three_accuracy": scores["all_three"],
        "schema_rps": round(n / secs, 2), "free_text_rps": round(n / free_secs, 2),
        "free_text_same_length_rps": round(n / same_secs, 2),
        "schema_mean_completion_tokens": round(mean_tokens, 1),
        "free_text_mean_completion_tokens": round(sum(r.completion_tokens for r in free) / n, 1)}
    details = {"engine": engine, "question": QUESTION, "split": "test", "concurrency": c, **scores}
    return figures, details

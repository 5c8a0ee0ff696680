"""`vqa bench adapter-vllm`: does a LoRA adapter answer the same in vLLM as in process? (issue 20)

`--requests` adapter-split catalogue questions (`--seed`; the catalogue as `vqa data synth` writes it),
greedy, as many new tokens as `vqa eval` allows. In process: `vqa eval`'s pipeline (transformers
engine, the adapter loaded by PEFT). vLLM (started with the adapter as `vqa bench upstream` starts
it, or `--upstream-url` with `--adapter NAME=PATH` naming what it serves): straight to its OpenAI
API, `model` = the adapter's name, each picture as a PNG already resized to the pipeline's pixel
budget (so vLLM's processor keeps it as it is). Target: >= 95% equal answers. To compare vLLM in
float32, start it yourself (`scripts/vllm.sh serve ... -- --dtype float32`) and pass --upstream-url.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from vqaserve.bench.config import BenchConfig, Result
from vqaserve.bench.vllm_server import BUNDLED

if TYPE_CHECKING:
    from vqaserve.bench.scenarios import Bench
    from vqaserve.eval.harness import EvalItem

ADAPTER = ("shop-toy-sunglasses", str(BUNDLED / "shop-toy-sunglasses"))


@contextlib.contextmanager
def vllm_with_adapter(cfg: BenchConfig, name: str, path: str) -> Iterator[str]:
    """The base URL of a vLLM serving the adapter: --upstream-url as given, or one started here."""
    from vqaserve.bench.upstream import UpstreamBench
    from vqaserve.bench.vllm_server import VllmServer

    if cfg.upstream_url:
        yield cfg.upstream_url.rstrip("/").removesuffix("/v1")
        return
    with VllmServer(UpstreamBench(cfg).model_dir, adapters={name: path}) as server:
        yield server.url


async def ask_vllm(url: str, name: str, items: list[EvalItem], budget: tuple[int, int], tokens: int,
                   concurrency: int) -> list[str]:
    import httpx

    from vqaserve.bench.workload import chat_request
    from vqaserve.errors import ConfigError
    from vqaserve.images.decode import load_image_file

    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        served = {m["id"] for m in (await client.get("/v1/models")).json()["data"]}
        if name not in served:
            raise ConfigError(f"vLLM at {url} does not serve {name!r} (it serves {sorted(served)}); start it "
                              f"with --lora-modules {name}=PATH or pass --adapter NAME=PATH")
        gate = asyncio.Semaphore(concurrency)

        async def one(item: EvalItem) -> str:
            picture = load_image_file(item.image, *budget).image  # the pipeline's resize, done here
            buf = io.BytesIO()
            picture.save(buf, format="PNG")
            async with gate:
                reply = await client.post("/v1/chat/completions",
                                          json=chat_request(buf.getvalue(), "image/png", item.question, name, tokens))
            reply.raise_for_status()
            return str(reply.json()["choices"][0]["message"]["content"] or "")

        return list(await asyncio.gather(*(one(item) for item in items)))


def compare(rows: list[dict[str, str]]) -> dict[str, Any]:
    """Equal answers and exact-match accuracy on each side, from {question, gold, in_process, vllm} rows."""
    from vqaserve.eval.harness import is_correct

    n = len(rows)
    equal = sum(r["in_process"] == r["vllm"] for r in rows)
    return {"adapter_vllm_equal_share": round(equal / n, 4), "equal": f"{equal}/{n}",
            "accuracy_in_process": round(sum(is_correct(r["in_process"], r["gold"]) for r in rows) / n, 4),
            "accuracy_vllm": round(sum(is_correct(r["vllm"], r["gold"]) for r in rows) / n, 4)}


async def run(bench: Bench) -> Result:
    from vqaserve.bench.upstream import UpstreamBench
    from vqaserve.eval.harness import evaluate, items_from_jsonl, question_for
    from vqaserve.train.synthetic import write_split
    from vqaserve.wiring import build_pipeline

    cfg = bench.cfg
    name, path = cfg.adapter or ADAPTER
    base = cfg.model or str(UpstreamBench(cfg).model_dir)
    settings = cfg.settings(VQA_MODEL=base, VQA_ENGINE="transformers", VQA_ADAPTERS=f"{name}={path}")
    c = cfg.top_concurrency
    with tempfile.TemporaryDirectory(prefix="vqa-bench-adapter-") as tmp:
        items = items_from_jsonl(str(write_split("adapter", cfg.requests, cfg.seed, tmp)))
        pipeline = build_pipeline(settings)
        await pipeline.engine.start()
        try:
            budget = pipeline.budget().as_tuple()
            local = await evaluate(pipeline, items, model=name, concurrency=c, progress=cfg.progress)
        finally:
            await pipeline.engine.close()
        with vllm_with_adapter(cfg, name, path) as url:
            tokens = question_for(items[0], name).params.max_new_tokens  # what evaluate() asked in process
            remote = await ask_vllm(url, name, items, budget, tokens, c)
    rows = [{"question": o.item.question, "gold": o.item.answer, "in_process": o.prediction.strip(),
             "vllm": r.strip()} for o, r in zip(local.outcomes, remote, strict=True)]
    figures = compare(rows)
    details = {"adapter": name, "adapter_path": path, "base_model": base, "split": "adapter", "seed": cfg.seed,
               "pixel_budget": list(budget), "different": [r for r in rows if r["in_process"] != r["vllm"]],
               "answers": rows}
    return figures, details

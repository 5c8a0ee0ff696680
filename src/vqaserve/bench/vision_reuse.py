"""`vqa bench vision-reuse`: does a follow-up question about a photo skip the vision tower? (issue 22)

In process, through the transformers engine (the vision memo lives there): `--requests` pictures,
question 1 then question 2 about each, one request at a time, greedy, a fixed answer length (EOS
ignored); generate() wall time for each, and the vision tower's own time (forward hooks on the
tower, synchronised on CUDA). Target: question 2 takes at most question 1's time minus the tower's.
A paired baseline, question 2 again right after with the memo emptied, shows the same question
without reuse (questions differ in cost), and whether reuse changes the answer.
`--env VQA_VISION_MEMO_MB=0` runs everything without the memo.
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Any

from vqaserve.bench.config import Result, torch_threads
from vqaserve.bench.report import ratio

if TYPE_CHECKING:
    from vqaserve.bench.scenarios import Bench
    from vqaserve.types import EngineRequest, NormalizedImage

QUESTIONS = ("What product is shown?", "What colour is it?")
RUNS = (("q1", QUESTIONS[0]), ("q2", QUESTIONS[1]), ("q2_no_reuse", QUESTIONS[1]))


class TowerClock:
    """Milliseconds spent inside a vision tower since `ms` was last set to 0."""

    def __init__(self, visual: Any) -> None:
        import torch

        self.ms, self._t0 = 0.0, 0.0
        cuda = next(visual.parameters()).is_cuda
        self._sync = torch.cuda.synchronize if cuda else (lambda: None)
        visual.register_forward_pre_hook(self._start)
        visual.register_forward_hook(self._stop)

    def _start(self, *_: object) -> None:
        self._sync()
        self._t0 = time.perf_counter()

    def _stop(self, *_: object) -> None:
        self._sync()
        self.ms += (time.perf_counter() - self._t0) * 1000


def ask(question: str, image: NormalizedImage, tokens: int) -> EngineRequest:
    from vqaserve.types import EngineRequest, GenerationParams, Part, Turn

    return EngineRequest(turns=[Turn(role="user", parts=[Part(image=image), Part(text=question)])],
                         params=GenerationParams(max_new_tokens=tokens, ignore_eos=True), request_id=question)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the per-picture times and the target's verdict on them (and per picture)."""
    def med(key: str) -> float:
        return round(statistics.median(r[key] for r in rows), 3)

    q1, q2, base, tower = med("q1_ms"), med("q2_ms"), med("q2_no_reuse_ms"), med("q1_tower_ms")
    return {
        "q1_ms": q1, "q2_ms": q2, "q2_no_reuse_ms": base, "q1_tower_ms": tower,
        "q2_tower_ms": med("q2_tower_ms"), "q2_no_reuse_tower_ms": med("q2_no_reuse_tower_ms"),
        "vision_reuse_q2_over_q1": ratio(q2, q1),
        "vision_reuse_q2_over_q1_minus_tower": ratio(q2, q1 - tower),
        "vision_reuse_q2_over_q2_no_reuse": ratio(q2, base),
        "tower_share_of_q1": ratio(tower, q1),
        "pictures_meeting_target": f"{sum(r['q2_ms'] <= r['q1_ms'] - r['q1_tower_ms'] for r in rows)}/{len(rows)}",
        "answers_equal_with_and_without_reuse": all(r["q2_answer"] == r["q2_no_reuse_answer"] for r in rows),
    }


async def run(bench: Bench) -> Result:
    with torch_threads(bench.cfg.torch_threads):
        return await measure(bench)


async def measure(bench: Bench) -> Result:
    from vqaserve.engines.transformers import TransformersEngine
    from vqaserve.engines.vision_memo import image_model
    from vqaserve.errors import ConfigError
    from vqaserve.images import decode as imgs
    from vqaserve.images.budget import pixel_budget
    from vqaserve.types import EngineResult

    cfg = bench.cfg
    settings = cfg.settings()
    engine = TransformersEngine(settings)
    await engine.start()
    try:
        memo = engine.vision_memo
        lo, hi = pixel_budget(settings.images, engine.info().pixel_budget).as_tuple()
        module = image_model(engine.module)  # read only to time the vision tower
        if module is None:
            raise ConfigError(f"vision-reuse needs a Qwen3-VL model with a vision tower; {settings.llm.model} "
                              "has none the engine recognises")
        clock = TowerClock(module.visual)
        pictures = [imgs.normalize(i.data, lo, hi, settings.images.max_image_pixels)
                    for i in bench.fresh_items(cfg.requests + 1)]
        for q in QUESTIONS:  # warm-up: first-call costs are not the tower's
            await engine.generate([ask(q, pictures[0], cfg.max_new_tokens)])
        rows = []
        for image in pictures[1:]:
            row: dict[str, Any] = {}
            for name, q in RUNS:
                if name == "q2_no_reuse" and memo is not None:
                    memo.clear()
                clock.ms = 0.0
                t0 = time.perf_counter()
                (result,) = await engine.generate([ask(q, image, cfg.max_new_tokens)])
                row[f"{name}_ms"] = (time.perf_counter() - t0) * 1000
                row[f"{name}_tower_ms"] = clock.ms
                if not isinstance(result, EngineResult):
                    raise result
                row[f"{name}_answer"] = result.text
            rows.append(row)
        info = engine.info()
    finally:
        await engine.close()
    figures = summarize(rows)
    details = {"model": info.model_id, "device": info.device, "dtype": info.dtype, "pictures": len(rows),
               "answer_tokens": cfg.max_new_tokens, "pixel_budget": [lo, hi],
               "vision_memo_mb": settings.llm.vision_memo_mb,
               "memo": {"hits": memo.hits, "misses": memo.misses, "entries": len(memo)} if memo else None,
               "rows": rows}
    return figures, details

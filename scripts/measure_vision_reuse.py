"""Does a follow-up question about a photo skip the vision tower's time? (issue 22, part 3)

In process, through the transformers engine: N pictures, question 1 then question 2 about each
(one request at a time, greedy, fixed answer length), generate() wall time for each, and the vision
tower's own time (forward hooks on the tower, synchronised on CUDA). The target: question 2 takes
at most question 1's time minus the tower's. A paired baseline, question 2 asked again right after
with the memo emptied, shows the same question without reuse (questions differ in cost).

    .venv/bin/python scripts/measure_vision_reuse.py [--model shop-toy] [--pictures 50] [--memo-mb 0] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import platform
import statistics
import sys
import time
from typing import Any

from PIL import Image, ImageDraw

from vqaserve.engines.transformers import TransformersEngine
from vqaserve.engines.vision_memo import image_model
from vqaserve.images import decode as imgs
from vqaserve.images.budget import pixel_budget
from vqaserve.settings import load_settings
from vqaserve.types import EngineRequest, EngineResult, GenerationParams, NormalizedImage, Part, Turn

QUESTIONS = ("What product is shown?", "What colour is it?")


def photo(i: int, size: tuple[int, int]) -> bytes:
    img = Image.new("RGB", size, ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256))
    draw = ImageDraw.Draw(img)
    for k in range(6):  # some structure per picture
        x, y = (i * 13 + k * 29) % size[0], (i * 7 + k * 17) % size[1]
        draw.rectangle([x, y, x + size[0] // 4, y + size[1] // 5], fill=((k * 50) % 256, 255 - i % 256, 90))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def ask(question: str, image: NormalizedImage, tokens: int) -> EngineRequest:
    return EngineRequest(turns=[Turn(role="user", parts=[Part(image=image), Part(text=question)])],
                         params=GenerationParams(max_new_tokens=tokens, ignore_eos=True), request_id=question)


class TowerClock:
    """Milliseconds spent inside the vision tower since the last reset."""

    def __init__(self, visual: Any) -> None:
        import torch

        self.ms, self._t0, self._cuda = 0.0, 0.0, next(visual.parameters()).is_cuda
        self._sync = torch.cuda.synchronize if self._cuda else (lambda: None)
        visual.register_forward_pre_hook(self._start)
        visual.register_forward_hook(self._stop)

    def _start(self, *_: Any) -> None:
        self._sync()
        self._t0 = time.perf_counter()

    def _stop(self, *_: Any) -> None:
        self._sync()
        self.ms += (time.perf_counter() - self._t0) * 1000


async def measure(model: str, pictures: int, tokens: int, size: tuple[int, int], memo_mb: int) -> dict[str, Any]:
    engine = TransformersEngine(load_settings(model=model, vision_memo_mb=memo_mb))
    await engine.start()
    memo = engine.vision_memo
    if memo is None and memo_mb:
        raise SystemExit(f"no vision memo: {model} is not a Qwen3-VL model")
    lo, hi = pixel_budget(engine.settings.images, engine.info().pixel_budget).as_tuple()
    clock = TowerClock(image_model(engine._model).visual)
    warm = imgs.normalize(photo(10_000, size), lo, hi, 10**9)
    for q in QUESTIONS:  # warm-up: first-call costs are not the tower's
        await engine.generate([ask(q, warm, tokens)])
    rows = []
    for i in range(pictures):
        image = imgs.normalize(photo(i, size), lo, hi, 10**9)
        row: dict[str, float] = {}
        # q1, then q2 reusing q1's tower output, then (memo emptied) q2 again through the tower:
        # a paired baseline for the same question, taken moments apart on the same machine
        for name, q in (("q1", QUESTIONS[0]), ("q2", QUESTIONS[1]), ("q2_no_reuse", QUESTIONS[1])):
            if name == "q2_no_reuse" and memo is not None:
                memo.clear()
            clock.ms = 0.0
            t0 = time.perf_counter()
            (result,) = await engine.generate([ask(q, image, tokens)])
            row[f"{name}_ms"] = (time.perf_counter() - t0) * 1000
            row[f"{name}_tower_ms"] = clock.ms
            assert isinstance(result, EngineResult), result
        rows.append(row)
    await engine.close()

    def med(key: str) -> float:
        return round(statistics.median(r[key] for r in rows), 3)

    q1, q2, base, tower = med("q1_ms"), med("q2_ms"), med("q2_no_reuse_ms"), med("q1_tower_ms")
    meets = sum(r["q2_ms"] <= r["q1_ms"] - r["q1_tower_ms"] for r in rows)
    meets_paired = sum(r["q2_ms"] <= r["q2_no_reuse_ms"] - r["q2_no_reuse_tower_ms"] for r in rows)
    info = engine.info()
    return {
        "command": " ".join(sys.argv), "model": model, "device": info.device, "dtype": info.dtype,
        "pictures": pictures, "answer_tokens": tokens, "picture_size": list(size),
        "visual_tokens_per_picture": f"{lo // 1024}..{hi // 1024}",
        "median_ms": {"q1_generate": q1, "q2_generate": q2, "q2_generate_no_reuse": base,
                      "q1_vision_tower": tower, "q2_vision_tower": med("q2_tower_ms"),
                      "q2_no_reuse_vision_tower": med("q2_no_reuse_tower_ms")},
        "q2_over_q1": round(q2 / q1, 3),
        "q2_over_q2_no_reuse": round(q2 / base, 3),
        "tower_share_of_q1": round(tower / q1, 3),
        "saved_over_tower": round((base - q2) / med("q2_no_reuse_tower_ms"), 3) if tower else None,
        "target_q2_le_q1_minus_tower": q2 <= q1 - tower,
        "pictures_meeting_target": f"{meets}/{pictures}",
        "pictures_meeting_paired_target": f"{meets_paired}/{pictures}",
        "vision_memo_mb": memo_mb,
        "memo": {"hits": memo.hits, "misses": memo.misses, "entries": len(memo), "bytes": memo.bytes}
        if memo else None,
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shop-toy")
    parser.add_argument("--pictures", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=8, help="answer length (EOS ignored)")
    parser.add_argument("--size", default="640x480", help="picture size before the pixel budget")
    parser.add_argument("--memo-mb", type=int, default=256, help="VQA_VISION_MEMO_MB (0: the baseline)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    report = asyncio.run(measure(args.model, args.pictures, args.tokens, (w, h), args.memo_mb))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()

"""Preprocessing of one photo to model inputs: our path vs transformers' processor on the full image.

Ours: images.normalize (JPEG draft decoding at 1/2..1/8 scale, one resize to the smart-resize
target) then the image processor with do_resize=False. Theirs: a full decode of every pixel, then
the processor's own smart resize of the full-size image.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable
from typing import Any

from PIL import Image

from vqaserve.images import decode as imgs
from vqaserve.images.budget import PixelBudget, processor_budget


def load_image_processor(model_dir: str | None) -> Any:
    """The model's image processor, or (no model dir) Qwen3-VL's: patch 16, merge 2, mean=std=0.5."""
    if model_dir:
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(model_dir).image_processor
    from transformers import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2,
                                 image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                 size={"shortest_edge": 256 * 32 * 32, "longest_edge": 1280 * 32 * 32})


def processor_pixels(processor: Any) -> tuple[int, int]:
    """The budget the processor declares (Qwen's default when it declares none)."""
    budget = processor_budget(processor) or PixelBudget(256 * 32 * 32, 1280 * 32 * 32)
    return budget.as_tuple()


def ours(data: bytes, processor: Any) -> Any:
    lo, hi = processor_pixels(processor)
    image = imgs.normalize(data, lo, hi, 64_000_000).image
    return processor(images=[image], do_resize=False, return_tensors="pt")


def theirs(data: bytes, processor: Any) -> Any:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    return processor(images=[image], return_tensors="pt")


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up (first call imports and allocates)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def compare(data: bytes, model_dir: str | None, repeats: int = 5,
            torch_threads: int | None = None) -> dict[str, Any]:
    from vqaserve.bench.config import torch_threads as threads

    processor = load_image_processor(model_dir)
    with threads(torch_threads):  # the processor's tensor work runs on torch threads
        a, b = ours(data, processor), theirs(data, processor)
        ours_ms = _median_ms(lambda: ours(data, processor), repeats)
        theirs_ms = _median_ms(lambda: theirs(data, processor), repeats)
    grid_ours = [int(x) for x in a["image_grid_thw"][0]]
    grid_theirs = [int(x) for x in b["image_grid_thw"][0]]
    return {"ours_ms": round(ours_ms, 1), "transformers_ms": round(theirs_ms, 1),
            "ratio": round(ours_ms / theirs_ms, 3), "grid_ours": grid_ours, "grid_transformers": grid_theirs,
            "same_token_count": grid_ours == grid_theirs, "jpeg_bytes": len(data),
            "processor": type(processor).__name__, "repeats": repeats}

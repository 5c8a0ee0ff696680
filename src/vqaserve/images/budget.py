"""The pixel budget: how many pixels (visual tokens x 32 x 32) a picture may have, worked out once.

The service's budget (VQA_MIN_PIXELS / VQA_MAX_PIXELS) is intersected with the one the model's image
processor declares (`size.shortest_edge` / `size.longest_edge`), so a picture is never fitted to a
size the model would resize again. The pipeline, the in-process engine, the trainer and the
benchmarks all ask here, so training and serving see the very same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vqaserve.settings import ImageSettings


@dataclass(frozen=True)
class PixelBudget:
    min_pixels: int
    max_pixels: int

    def as_tuple(self) -> tuple[int, int]:
        return self.min_pixels, self.max_pixels


def processor_budget(image_processor: object) -> PixelBudget | None:
    """The budget a Hugging Face image processor declares (Qwen2/3-VL: `size` with shortest_edge and
    longest_edge, in pixels), or None when it declares none."""
    size = getattr(image_processor, "size", None) or {}
    if isinstance(size, dict):
        lo, hi = size.get("shortest_edge"), size.get("longest_edge")
    else:  # a SizeDict-like object
        lo, hi = getattr(size, "shortest_edge", None), getattr(size, "longest_edge", None)
    if not (lo and hi):
        return None
    return PixelBudget(int(lo), int(hi))


def pixel_budget(images: ImageSettings, model: PixelBudget | None) -> PixelBudget:
    """The settings' budget intersected with the model's (when it declares one)."""
    if model is None:
        return PixelBudget(images.min_pixels, images.max_pixels)
    hi = min(images.max_pixels, model.max_pixels)
    lo = min(max(images.min_pixels, model.min_pixels), hi)
    return PixelBudget(lo, hi)

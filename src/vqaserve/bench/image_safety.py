"""`vqa bench image-safety`: the image check's cost per picture and false positives (issue 5).

Every catalogue picture (vqaserve.train.synthetic, test split) is a harmless product photo, so every
refusal is a false positive (target: 0). Pictures go through the real path first (PNG bytes ->
images.normalize), then only the check itself is timed; a checker that remembers passed pictures is
measured without that memory (the model's own cost on every picture). The checker is the server's:
VQA_SAFETY_IMAGE (default nudenet; `--env VQA_SAFETY_IMAGE=hf:<dir>` for another), its threads
VQA_SAFETY__IMAGE_THREADS.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from vqaserve.bench.config import Result

if TYPE_CHECKING:
    from vqaserve.bench.scenarios import Bench


def cost_summary(costs_ms: list[float]) -> dict[str, float]:
    ordered = sorted(costs_ms)
    return {"mean": round(statistics.fmean(ordered), 2), "p50": round(ordered[len(ordered) // 2], 2),
            "p95": round(ordered[max(0, int(len(ordered) * 0.95) - 1)], 2), "max": round(ordered[-1], 2)}


async def run(bench: Bench) -> Result:
    from tqdm import tqdm

    from vqaserve.errors import BlockedInput, ConfigError
    from vqaserve.images import decode as images
    from vqaserve.safety.image_check import NudeNetChecker, RememberPassed, build_image_checker
    from vqaserve.train.synthetic import make_sample, png_bytes

    cfg = bench.cfg
    settings = cfg.settings()
    built = build_image_checker(settings)
    if built is None:
        raise ConfigError("image-safety measures the image check, and VQA_SAFETY_IMAGE is off: leave it at "
                          "its default (nudenet) or name a checker with --env VQA_SAFETY_IMAGE=...")
    checker = built.inner if isinstance(built, RememberPassed) else built
    s = settings.images

    def normalized(index: int, seed: int) -> Any:
        picture = png_bytes(make_sample("test", seed, index).image)
        return images.normalize(picture, s.min_pixels, s.max_pixels, s.max_image_pixels, f"test/{index}")

    t0 = time.perf_counter()
    with contextlib.suppress(BlockedInput):
        checker.check(normalized(0, cfg.seed + 1))  # loads the model
    load_s = time.perf_counter() - t0

    costs: list[float] = []
    flagged: list[dict[str, object]] = []
    labels: Counter[str] = Counter()
    top_unsafe = 0.0
    for index in tqdm(range(cfg.requests), desc="checking", unit="picture", disable=not cfg.progress, leave=False):
        image = normalized(index, cfg.seed)
        t = time.perf_counter()
        try:
            checker.check(image)
        except BlockedInput:
            flagged.append({"index": index, "spec": str(make_sample("test", cfg.seed, index).spec)})
        costs.append((time.perf_counter() - t) * 1000)
        if isinstance(checker, NudeNetChecker):
            # A second pass only for the record (what it saw); not timed.
            for det in checker.detections(image):
                labels[str(det["class"])] += 1
                if det["class"] in checker.unsafe:
                    top_unsafe = max(top_unsafe, float(det["score"]))
    cost = cost_summary(costs)
    figures: dict[str, Any] = {
        "image_safety_false_positives": len(flagged), "false_positive_rate": round(len(flagged) / len(costs), 4),
        "ms_per_image_mean": cost["mean"], "ms_per_image_p50": cost["p50"], "ms_per_image_p95": cost["p95"],
        "load_s": round(load_s, 3)}
    details = {"checker": settings.safety.image, "threads": settings.safety.image_threads, "split": "test",
               "seed": cfg.seed, "pictures": len(costs), "ms_per_image": cost,
               "max_unsafe_score": round(top_unsafe, 4), "detected_labels": dict(labels.most_common()),
               "flagged": flagged[:20]}
    return figures, details

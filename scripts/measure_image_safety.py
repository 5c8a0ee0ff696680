"""Measure the image safety checker on catalogue pictures: cost per image and false-positive rate.

Every catalogue picture (vqaserve.train.synthetic) is a harmless product photo, so every refusal is a
false positive (target: 0). Pictures go through the real path first (PNG bytes -> images.normalize),
then only the check itself is timed.

    PYTHONPATH=src .venv/bin/python scripts/measure_image_safety.py --n 1000 --out runs/image-safety.json
    ... --checker hf:/models/nsfw_image_detection      (any VQA_SAFETY_IMAGE value)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="catalogue pictures to check")
    parser.add_argument("--split", default="test", help="catalogue split (train, test, heldout, adapter)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checker", default="nudenet", help="nudenet | hf:<dir> (as VQA_SAFETY_IMAGE)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (nudenet)")
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    from vqaserve.errors import BlockedInput
    from vqaserve.images import decode as images
    from vqaserve.safety.image_check import NudeNetChecker, RememberPassed, build_image_checker
    from vqaserve.settings import Settings
    from vqaserve.train.synthetic import make_sample, png_bytes

    settings = Settings(safety={"image": args.checker})
    checker = build_image_checker(settings)
    if checker is None:
        parser.error("--checker off measures nothing")
    if isinstance(checker, RememberPassed):
        checker = checker.inner  # the model's own cost on every picture, never a remembered verdict
    if isinstance(checker, NudeNetChecker):
        checker.threads = args.threads
    s = settings.images

    t0 = time.perf_counter()
    warm = images.normalize(png_bytes(make_sample(args.split, args.seed + 1, 0).image), s.min_pixels,
                            s.max_pixels, s.max_image_pixels)
    with contextlib.suppress(BlockedInput):
        checker.check(warm)  # loads the model
    load_s = time.perf_counter() - t0

    costs: list[float] = []
    flagged: list[dict[str, object]] = []
    labels: Counter[str] = Counter()
    top_unsafe = 0.0
    for index in range(args.n):
        sample = make_sample(args.split, args.seed, index)
        image = images.normalize(png_bytes(sample.image), s.min_pixels, s.max_pixels, s.max_image_pixels,
                                 f"{args.split}/{index}")
        t = time.perf_counter()
        blocked = False
        try:
            checker.check(image)
        except BlockedInput:
            blocked = True
        costs.append((time.perf_counter() - t) * 1000)
        if isinstance(checker, NudeNetChecker):
            # Second pass only for the report (what it saw); not timed.
            for det in checker.detections(image):
                labels[str(det["class"])] += 1
                if det["class"] in checker.unsafe:
                    top_unsafe = max(top_unsafe, float(det["score"]))
        if blocked:
            flagged.append({"index": index, "spec": str(sample.spec)})
        if (index + 1) % 100 == 0:
            print(f"  {index + 1}/{args.n}  mean {statistics.fmean(costs):.1f} ms  flagged {len(flagged)}",
                  file=sys.stderr)

    costs.sort()
    figures = {
        "checker": args.checker, "split": args.split, "seed": args.seed, "n": args.n, "threads": args.threads,
        "load_s": round(load_s, 3),
        "ms_per_image": {"mean": round(statistics.fmean(costs), 2), "p50": round(costs[len(costs) // 2], 2),
                         "p95": round(costs[int(len(costs) * 0.95) - 1], 2), "max": round(costs[-1], 2)},
        "false_positives": len(flagged), "false_positive_rate": len(flagged) / args.n,
        "max_unsafe_score": round(top_unsafe, 4), "detected_labels": dict(labels.most_common()),
        "flagged": flagged[:20],
        "command": " ".join(sys.argv), "python": platform.python_version(), "machine": platform.machine(),
        "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(figures, indent=2, ensure_ascii=False))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

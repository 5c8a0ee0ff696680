"""`vqa bench near-duplicates`: the near-duplicate index's re-encode hit rate and false hits (issue 6).

`--requests` distinct catalogue pictures (test-split specs, drawn by vqaserve.train.synthetic) are
indexed first: a distinct picture that maps to another one is a false hit. Then each one's re-encoded
copies (JPEG qualities, resized down and up, lossy WEBP, PNG re-saves) are looked up: a copy that maps
to its own original is a hit, to another picture a false hit. Hard negatives too: each picture with a
small high-contrast label (3% and 6% of its side), and the same layout and background with another
colour, pattern or category; none may map to the original. All pictures go through images.normalize
with the service's pixel budget (`--env VQA_MIN_PIXELS=...` changes it), exactly as requests do.
"""

from __future__ import annotations

import dataclasses
import io
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw

from vqaserve.bench.config import Result
from vqaserve.bench.workload import encode

if TYPE_CHECKING:
    from vqaserve.bench.scenarios import Bench


def resized(img: Image.Image, f: float) -> Image.Image:
    return img.resize((max(16, round(img.width * f)), max(16, round(img.height * f))), Image.Resampling.LANCZOS)


VARIANTS: dict[str, Callable[[Image.Image], bytes]] = {
    "png_resave": lambda im: encode(im, "PNG", compress_level=9),
    "jpeg_q95": lambda im: encode(im, "JPEG", quality=95),
    "jpeg_q75": lambda im: encode(im, "JPEG", quality=75),
    "jpeg_q50": lambda im: encode(im, "JPEG", quality=50),
    "webp_q80": lambda im: encode(im, "WEBP", quality=80),
    "resize_0.75_png": lambda im: encode(resized(im, 0.75), "PNG"),
    "resize_0.5_jpeg_q85": lambda im: encode(resized(im, 0.5), "JPEG", quality=85),
    "resize_1.5_jpeg_q90": lambda im: encode(resized(im, 1.5), "JPEG", quality=90),
}


def labelled(img: Image.Image, fraction: float, rng: random.Random) -> Image.Image:
    """The same picture with a small high-contrast label added: another product, must not hit."""
    out = img.copy()
    side = max(3, round(min(out.size) * fraction))
    x, y = rng.randrange(out.width - side), rng.randrange(out.height - side)
    under = out.getpixel((x + side // 2, y + side // 2))
    assert isinstance(under, tuple)
    ImageDraw.Draw(out).rectangle((x, y, x + side, y + side), fill=tuple(0 if c > 127 else 255 for c in under))
    return out


def picture(rng: random.Random) -> tuple[Image.Image, Callable[[], dict[str, Image.Image]]]:
    """A test-split catalogue picture, and its hard negatives drawn on demand: the same layout and
    background with another colour, pattern or category."""
    from vqaserve.train import synthetic

    spec = synthetic.sample_spec("test", rng)
    state = rng.getstate()
    image = synthetic.render(spec, rng).convert("RGB")
    changes = (("colour", (spec.colour + 1 + rng.randrange(9)) % 10),
               ("pattern", (spec.pattern + 1 + rng.randrange(3)) % 4),
               ("category", (spec.category + 1 + rng.randrange(7)) % 8))

    def siblings() -> dict[str, Image.Image]:
        out = {}
        for field, value in changes:
            twin = random.Random()
            twin.setstate(state)
            out[field] = synthetic.render(dataclasses.replace(spec, **{field: value}), twin).convert("RGB")
        return out

    return image, siblings


def summary(n: int, hits: Counter[str], wrong: Counter[str], negatives: Counter[str], tried: Counter[str],
            false_hits: int, identical: int) -> dict[str, Any]:
    """The figures: every distinct picture indexed, copies and negatives of all `n` checked."""
    copies = n * len(VARIANTS)
    return {
        "near_duplicates_hit_rate": round(sum(hits.values()) / copies, 4),
        "near_duplicates_false_hits": false_hits + sum(wrong.values()) + sum(negatives.values()),
        "distinct_pictures": n, "copies": copies, "hard_negatives": sum(tried.values()),
        "false_hits_between_distinct_pictures": false_hits, "identical_renders": identical,
        "hard_negative_false_hits": {k: negatives[k] for k in tried},
        "per_variant_hit_rate": {k: round(hits[k] / n, 4) for k in VARIANTS},
        "per_variant_false_hits": {k: wrong[k] for k in VARIANTS},
    }


async def run(bench: Bench) -> Result:
    from tqdm import tqdm

    from vqaserve.cache.neardup import NearDuplicateIndex
    from vqaserve.images import decode as imgs

    cfg = bench.cfg
    n = cfg.requests
    s = cfg.settings().images
    lo, hi = s.min_pixels, s.max_pixels

    def normalized(data: bytes) -> Any:
        return imgs.normalize(data, lo, hi, s.max_image_pixels)

    index = NearDuplicateIndex(max_images=n * (1 + len(VARIANTS)))
    rng = random.Random(cfg.seed)
    owner: dict[str, int] = {}  # canonical hash -> picture number
    originals: list[bytes] = []  # PNG bytes: 2,000 decoded pictures would hold gigabytes
    siblings: list[Callable[[], dict[str, Image.Image]]] = []
    false_hits = identical = 0
    t0 = time.perf_counter()
    for i in tqdm(range(n), desc="indexing", unit="picture", disable=not cfg.progress, leave=False):
        image, others = picture(rng)
        siblings.append(others)
        png = encode(image, "PNG")
        norm = normalized(png)
        canon = index.canonical(norm)
        if canon != norm.content_hash:
            false_hits += 1  # a distinct picture answered as another one
        elif canon in owner:
            identical += 1  # the renderer drew the very same pixels twice: not a false hit
        owner.setdefault(canon, i)
        originals.append(png)
    hits: Counter[str] = Counter()
    wrong: Counter[str] = Counter()
    negatives: Counter[str] = Counter()
    tried: Counter[str] = Counter()
    for i, png in enumerate(tqdm(originals, desc="copies", unit="picture", disable=not cfg.progress, leave=False)):
        image = Image.open(io.BytesIO(png)).convert("RGB")
        for name, make in VARIANTS.items():
            who = owner.get(index.canonical(normalized(make(image))))
            if who == i:
                hits[name] += 1
            elif who is not None:
                wrong[name] += 1
        hard = {"label_3pct": labelled(image, 0.03, rng), "label_6pct": labelled(image, 0.06, rng),
                **{f"other_{k}": v for k, v in siblings[i]().items()}}
        for name, other in hard.items():
            tried[name] += 1
            if owner.get(index.canonical(normalized(encode(other, "JPEG", quality=90)))) == i:
                negatives[name] += 1
    seconds = time.perf_counter() - t0
    everything = summary(n, hits, wrong, negatives, tried, false_hits, identical)
    per_kind = {k: everything.pop(k) for k in list(everything) if isinstance(everything[k], dict)}
    lookups = n + sum(tried.values()) + n * len(VARIANTS)
    everything["ms_per_lookup_incl_decode"] = round(1000 * seconds / lookups, 2)
    return everything, {"source": "vqaserve.train.synthetic (test split specs)", "seed": cfg.seed,
                        "pixel_budget": [lo, hi], "seconds": round(seconds, 1), **per_kind}

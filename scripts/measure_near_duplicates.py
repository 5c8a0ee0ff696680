"""Near-duplicate index: re-encode hit rate and false hits on distinct catalogue pictures.

    PYTHONPATH=src python scripts/measure_near_duplicates.py --n 2000 [--seed 0] [--json out.json]

Every distinct picture is indexed first (a distinct picture that maps to another one is a false
hit); then its re-encoded copies (JPEG qualities, resized down and up, lossy WEBP, PNG re-saves)
are looked up: a copy that maps to its own original is a hit, to another picture a false hit.
Pictures come from the shop catalogue renderer (vqaserve.train.synthetic) when it is installed,
else from the similar stand-in drawn here. All pictures go through images.normalize with the
service's default pixel budget, exactly as requests do.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable

from PIL import Image, ImageDraw

from vqaserve.cache.neardup import NearDuplicateIndex
from vqaserve.images import decode as imgs
from vqaserve.settings import Settings

COLOURS = [(220, 30, 30), (245, 140, 20), (240, 220, 30), (40, 170, 60), (40, 90, 220), (140, 50, 180),
           (245, 150, 190), (120, 70, 30), (20, 20, 20), (245, 245, 245)]


def _silhouette(category: int, x: float, y: float, s: float) -> list[tuple[float, float]]:
    shapes = [  # crude per-category outlines on a unit square
        [(0, .2), (.3, 0), (.7, 0), (1, .2), (.85, .4), (.75, .3), (.75, 1), (.25, 1), (.25, .3), (.15, .4)],
        [(.2, 0), (.8, 0), (.9, 1), (.6, 1), (.5, .35), (.4, 1), (.1, 1)],
        [(.35, 0), (.65, 0), (.7, .3), (1, 1), (0, 1), (.3, .3)],
        [(0, .15), (.35, 0), (.65, 0), (1, .15), (1, .6), (.8, .6), (.8, 1), (.2, 1), (.2, .6), (0, .6)],
        [(.1, .6), (.25, .2), (.5, .1), (.75, .2), (.9, .6), (1, .75), (0, .75)],
        [(0, .5), (.5, .45), (.6, .2), (.8, .2), (1, .7), (1, .9), (0, .9)],
        [(.1, .3), (.3, .3), (.35, .05), (.65, .05), (.7, .3), (.9, .3), (1, 1), (0, 1)],
        [(.1, .1), (.75, .1), (.75, .3), (1, .35), (1, .7), (.75, .75), (.75, 1), (.1, 1)],
    ]
    return [(x + px * s, y + py * s) for px, py in shapes[category]]


def render_standin(rng: random.Random) -> Image.Image:
    """A catalogue-like picture: 1-3 identical items (shape, colour, pattern) on a textured ground."""
    w, h = rng.randint(160, 640), rng.randint(160, 640)
    category, colour, pattern = rng.randrange(8), rng.randrange(10), rng.randrange(4)
    ground = COLOURS[(colour + rng.randint(3, 7)) % 10]
    ground = tuple(min(255, max(0, c + rng.randint(-30, 30))) for c in ground)
    img = Image.new("RGB", (w, h), ground)  # type: ignore[arg-type]
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(0, 40)):  # background texture
        x, y = rng.randrange(w), rng.randrange(h)
        tone = tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in ground)
        draw.ellipse((x, y, x + rng.randint(4, 30), y + rng.randint(4, 30)), fill=tone)  # type: ignore[arg-type]
    count = rng.randint(1, 3)
    s = min(w, h) * rng.uniform(0.3, 0.55) / (1 + 0.4 * (count - 1))
    for _ in range(count):
        x, y = rng.uniform(0, w - s), rng.uniform(0, h - s)
        item = Image.new("RGB", (w, h), COLOURS[colour])
        pd = ImageDraw.Draw(item)
        second = COLOURS[(colour + 5) % 10]
        step = max(3, int(s / rng.randint(5, 9)))
        if pattern == 1:
            for k in range(0, w + h, step * 2):
                pd.line((k, 0, k - h, h), fill=second, width=step // 2 + 1)
        elif pattern == 2:
            for px in range(0, w, step * 2):
                for py in range(0, h, step * 2):
                    pd.ellipse((px, py, px + step, py + step), fill=second)
        elif pattern == 3:
            for px in range(0, w, step * 2):
                for py in range(0, h, step * 2):
                    pd.rectangle((px, py, px + step, py + step), fill=second)
        mask = Image.new("L", (w, h), 0)
        ImageDraw.Draw(mask).polygon(_silhouette(category, x, y, s), fill=255)
        mask = mask.rotate(rng.uniform(-12, 12), center=(x + s / 2, y + s / 2))
        img.paste(item, mask=mask)
    return img


def catalogue_renderer() -> tuple[str, Callable[[random.Random], Image.Image]]:
    try:
        from vqaserve.train import synthetic  # the shop catalogue renderer (another branch)
    except ImportError:
        return "stand-in renderer (scripts/measure_near_duplicates.py)", render_standin
    def picture(rng: random.Random) -> Image.Image:  # a test-split spec, drawn by the catalogue renderer
        spec = synthetic.sample_spec("test", rng)
        state = rng.getstate()
        image = synthetic.render(spec, rng)
        changes = (("colour", (spec.colour + 1 + rng.randrange(9)) % 10),
                   ("pattern", (spec.pattern + 1 + rng.randrange(3)) % 4),
                   ("category", (spec.category + 1 + rng.randrange(7)) % 8))

        def siblings() -> dict[str, Image.Image]:
            """Hard negatives, drawn on demand: the same layout and background with another colour,
            pattern or category."""
            out = {}
            for field, value in changes:
                twin = random.Random()
                twin.setstate(state)
                out[field] = synthetic.render(dataclasses.replace(spec, **{field: value}), twin)
            return out

        image.info["siblings"] = siblings
        return image

    return "vqaserve.train.synthetic (test split specs)", picture


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)  # type: ignore[arg-type]
    return buf.getvalue()


def resized(img: Image.Image, f: float) -> Image.Image:
    return img.resize((max(16, round(img.width * f)), max(16, round(img.height * f))),
                      Image.Resampling.LANCZOS)


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="distinct pictures")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--standin", action="store_true", help="use the stand-in renderer even if the "
                    "catalogue renderer is installed")
    args = ap.parse_args(argv)

    source, render = (("stand-in renderer", render_standin) if args.standin else catalogue_renderer())
    s = Settings().images
    lo, hi = s.min_pixels, s.max_pixels
    index = NearDuplicateIndex(max_images=args.n * (1 + len(VARIANTS)))
    rng = random.Random(args.seed)
    owner: dict[str, int] = {}  # canonical hash -> picture number
    originals: list[bytes] = []  # PNG bytes: 2,000 decoded pictures would hold gigabytes
    siblings: dict[int, Callable[[], dict[str, Image.Image]]] = {}
    false_hits, exact_dupes = 0, 0
    t0 = time.perf_counter()
    for i in range(args.n):
        if i % 250 == 0:
            print(f"indexing distinct picture {i}/{args.n} ({time.perf_counter() - t0:.0f} s): "
                  f"{false_hits} false hits so far", file=sys.stderr, flush=True)
        picture = render(rng)
        siblings[i] = picture.info.pop("siblings", dict)
        png = encode(picture.convert("RGB"), "PNG")
        norm = imgs.normalize(png, lo, hi, s.max_image_pixels)
        canon = index.canonical(norm)
        if canon != norm.content_hash:
            false_hits += 1  # a distinct picture answered as another one
        elif canon in owner:
            exact_dupes += 1  # the renderer drew the very same pixels twice: not a false hit
        owner.setdefault(canon, i)
        originals.append(png)
    hits: Counter[str] = Counter()
    wrong: Counter[str] = Counter()
    # Hard negatives: each picture with a small label (3% / 6% of its side), and (catalogue) the
    # same layout with another colour, pattern or category. None may map to the original.
    negatives: Counter[str] = Counter()
    tried: Counter[str] = Counter()
    done = 0
    figures: dict[str, object] = {}
    for i, png in enumerate(originals):
        picture = Image.open(io.BytesIO(png)).convert("RGB")
        for name, make in VARIANTS.items():
            canon = index.canonical(imgs.normalize(make(picture), lo, hi, s.max_image_pixels))
            who = owner.get(canon)
            if who == i:
                hits[name] += 1
            elif who is not None:
                wrong[name] += 1
        others = {"label_3pct": labelled(picture, 0.03, rng), "label_6pct": labelled(picture, 0.06, rng),
                  **{f"other_{k}": v.convert("RGB") for k, v in siblings.pop(i)().items()}}
        for name, other in others.items():
            tried[name] += 1
            norm = imgs.normalize(encode(other, "JPEG", quality=90), lo, hi, s.max_image_pixels)
            if owner.get(index.canonical(norm)) == i:
                negatives[name] += 1
        done = i + 1
        if done % 25 == 0 or done == args.n:
            figures = report(args, source, done, hits, wrong, negatives, tried, false_hits, exact_dupes,
                             time.perf_counter() - t0, (lo, hi))
            print(f"{done}/{args.n}: {json.dumps(figures)}", file=sys.stderr, flush=True)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(figures, f, indent=2)
    print(json.dumps(figures, indent=2))
    return 0


def report(args: argparse.Namespace, source: str, done: int, hits: Counter[str], wrong: Counter[str],
           negatives: Counter[str], tried: Counter[str], false_hits: int, exact_dupes: int,
           seconds: float, budget: tuple[int, int]) -> dict[str, object]:
    """Figures so far: every distinct picture is indexed; copies and negatives of `done` of them."""
    copies = done * len(VARIANTS)
    return {
        "source": source, "distinct_pictures": args.n, "pictures_with_copies_checked": done,
        "copies": copies, "seed": args.seed,
        "reencode_hit_rate": round(sum(hits.values()) / copies, 4),
        "false_hits": false_hits + sum(wrong.values()) + sum(negatives.values()),
        "false_hits_between_distinct_pictures": false_hits,
        "identical_renders": exact_dupes,
        "hard_negatives": dict(tried),
        "hard_negative_false_hits": {k: negatives[k] for k in tried},
        "per_variant_hit_rate": {k: round(hits[k] / done, 4) for k in VARIANTS},
        "per_variant_false_hits": {k: wrong[k] for k in VARIANTS},
        "pixel_budget": list(budget), "seconds": round(seconds, 1),
        "ms_per_lookup_incl_decode": round(1000 * seconds / (args.n + sum(tried.values()) + copies), 2),
    }


if __name__ == "__main__":
    sys.exit(main())

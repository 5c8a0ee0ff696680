"""The synthetic shop catalogue's pictures and splits (docs: /SHOP_CATALOGUE.md); its vocabulary is
in `catalogue`, its questions in `questions`.

Everything is a pure function of (split, seed, index), so any sample can be re-made on its own, in
any order, in any process: `make_sample("test", 7, 123)` is always the same picture and question.
Pictures: 1-3 identical items (a per-category silhouette filled with a colour and a pattern) on a
contrasting, lightly textured background, 160-640 px per side, aspect ratio up to 2:1.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from vqaserve.train.catalogue import (
    CATEGORIES,
    COLOUR_RGB,
    COLOURS,
    OCCASIONS,
    SUNGLASSES,
    Spec,
    attribute_schema,
    is_held_out,
    occasion,
)
from vqaserve.train.questions import LANGS, QUESTION_TYPES, TASK_TYPES, held_out_question, make_question

SPLITS: tuple[str, ...] = ("train", "test", "heldout", "adapter", "paraphrase")
Split = Literal["train", "test", "heldout", "adapter", "paraphrase"]
# What a split's questions ask: "qa" the catalogue's seven question types (cycling), or one task.
TASKS: tuple[str, ...] = ("qa", *TASK_TYPES)

# Each split draws from its own seed space, so `train` seed 0 and `test` seed 0 never share a picture.
_SPLIT_SALT = {"train": 11, "test": 23, "heldout": 37, "adapter": 53}


@dataclass(frozen=True)
class Sample:
    image: Image.Image
    question: str
    answer: str
    type: str
    lang: str
    spec: Spec


# --- silhouettes: polygons and ellipses in a unit box ----------------------------------------------
Shape = list[tuple[str, Any]]  # ("poly", points) | ("ellipse"/"rect", box) | ("ring", box + width)
_SHAPES: dict[int, Shape] = {
    0: [("poly", [(.35, .1), (.5, .18), (.65, .1), (.95, .3), (.85, .46), (.75, .38), (.75, .95),
                  (.25, .95), (.25, .38), (.15, .46), (.05, .3)])],
    1: [("poly", [(.25, .05), (.75, .05), (.86, .95), (.6, .95), (.5, .35), (.4, .95), (.14, .95)])],
    2: [("poly", [(.38, .04), (.44, .04), (.5, .12), (.56, .04), (.62, .04), (.6, .36), (.92, .95),
                  (.08, .95), (.4, .36)])],
    3: [("poly", [(.35, .04), (.5, .14), (.65, .04), (.9, .14), (.99, .92), (.84, .94), (.78, .42),
                  (.78, .96), (.53, .96), (.5, .3), (.47, .96), (.22, .96), (.22, .42), (.16, .94),
                  (.01, .92), (.1, .14)])],
    4: [("ellipse", (.03, .55, .97, .8)), ("poly", [(.28, .67), (.3, .3), (.42, .22), (.58, .22),
                                                    (.7, .3), (.72, .67)])],
    5: [("poly", [(.06, .3), (.36, .3), (.42, .52), (.8, .6), (.95, .72), (.97, .86), (.06, .86)])],
    6: [("poly", [(.14, .42), (.86, .42), (.96, .92), (.04, .92)]), ("ring", (.27, .08, .73, .66, .09))],
    7: [("rect", (.16, .18, .68, .92)), ("ring", (.56, .32, .92, .76, .1))],
    8: [("ellipse", (.02, .36, .44, .72)), ("ellipse", (.56, .36, .98, .72)), ("rect", (.4, .42, .6, .5)),
        ("rect", (.0, .34, .1, .42)), ("rect", (.9, .34, 1.0, .42))],
}


def _silhouette(category: int, size: int) -> Image.Image:
    """An L-mode mask (255 = item) of one item, size x size pixels."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    s = size - 1
    for kind, geo in _SHAPES[category]:
        if kind == "poly":
            draw.polygon([(x * s, y * s) for x, y in geo], fill=255)
        elif kind == "ellipse":
            x0, y0, x1, y1 = geo
            draw.ellipse((x0 * s, y0 * s, x1 * s, y1 * s), fill=255)
        elif kind == "rect":
            x0, y0, x1, y1 = geo
            draw.rectangle((x0 * s, y0 * s, x1 * s, y1 * s), fill=255)
        elif kind == "ring":
            x0, y0, x1, y1, w = geo
            draw.ellipse((x0 * s, y0 * s, x1 * s, y1 * s), outline=255, width=max(2, round(w * s)))
    return mask


def _jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int = 12) -> tuple[int, int, int]:
    return tuple(min(255, max(0, c + rng.randint(-amount, amount))) for c in rgb)  # type: ignore[return-value]


def _distance(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))


def second_colours(colour: int) -> list[int]:
    """Pattern colours that contrast with the main colour (never its near-duplicates)."""
    return [c for c in range(10) if _distance(COLOUR_RGB[c], COLOUR_RGB[colour]) >= 150]


def _fill(spec: Spec, size: int, rng: random.Random) -> Image.Image:
    """The item's surface: main colour plus the pattern in a contrasting colour.

    The pattern covers at most ~40% of the surface so the main colour always dominates, and its
    period is a fraction of the item size so it survives the resize to the model's pixel budget.
    """
    main = _jitter(COLOUR_RGB[spec.colour], rng)
    tile = Image.new("RGB", (size, size), main)
    if spec.pattern == 0:
        return tile
    other = _jitter(COLOUR_RGB[rng.choice(second_colours(spec.colour))], rng)
    draw = ImageDraw.Draw(tile)
    period = size / rng.uniform(3.0, 4.2)
    phase = rng.uniform(0, period)
    steps = int(size / period) + 2
    if spec.pattern == 1:  # striped: horizontal bands
        band = 0.34 * period
        for k in range(-1, steps):
            y = phase + k * period
            draw.rectangle((0, y, size, y + band), fill=other)
    elif spec.pattern == 2:  # dotted: staggered dots
        r = 0.22 * period
        for row in range(-1, steps):
            for col in range(-1, steps):
                cx = phase + col * period + (period / 2 if row % 2 else 0)
                cy = phase + row * period
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=other)
    else:  # checked: a grid of bands both ways
        band = 0.22 * period
        for k in range(-1, steps):
            v = phase + k * period
            draw.rectangle((0, v, size, v + band), fill=other)
            draw.rectangle((v, 0, v + band, size), fill=other)
    return tile


def _background(width: int, height: int, avoid: list[tuple[int, int, int]],
                rng: random.Random) -> Image.Image:
    """A muted colour far from the item's colours, with a gradient and a little noise."""
    for _ in range(100):
        grey = rng.randint(0, 255)
        sat = rng.uniform(0.0, 0.35)
        base = tuple(round(grey * (1 - sat) + rng.randint(0, 255) * sat) for _ in range(3))
        if all(_distance(base, a) >= 110 for a in avoid):
            break
    bg = Image.new("RGB", (width, height), base)
    kind = rng.random()
    if kind < 0.4:  # gradient towards a slightly lighter/darker shade
        shade = tuple(min(255, max(0, c + rng.choice((-1, 1)) * rng.randint(15, 35))) for c in base)
        grad = Image.linear_gradient("L")
        if rng.random() < 0.5:
            grad = grad.transpose(Image.Transpose.ROTATE_90)
        grad = grad.resize((width, height))
        bg = Image.composite(Image.new("RGB", (width, height), shade), bg, grad)
    elif kind < 0.7:  # fine noise (paper / fabric)
        sigma = rng.uniform(6, 16)
        # Not Image.effect_noise: it draws from C's rand(), so the same seed gave another picture.
        # Seeded from values already drawn, so `rng` is consumed exactly as before.
        noise_rng = np.random.default_rng([width, height, *base, round(sigma * 1e6)])
        grain = np.clip(noise_rng.normal(128.0, sigma, (height, width)), 0, 255).astype(np.uint8)
        noise = Image.fromarray(grain, "L").convert("RGB")
        bg = ImageChops.add(bg, ImageChops.subtract(noise, Image.new("RGB", (width, height), (128,) * 3)),
                            scale=1.0, offset=0)
    return bg


def _place(count: int, width: int, height: int, rng: random.Random) -> tuple[int, list[tuple[int, int]]]:
    """Item size and top-left corners of `count` non-overlapping boxes (a margin between them)."""
    short = min(width, height)
    lo, hi = {1: (0.4, 0.8), 2: (0.3, 0.5), 3: (0.26, 0.4)}[count]
    for attempt in range(200):
        shrink = 0.985 ** attempt  # fall back to smaller items when a layout does not fit
        size = max(24, int(short * rng.uniform(lo, hi) * shrink))
        boxes: list[tuple[int, int]] = []
        for _ in range(count * 30):
            x, y = rng.randint(0, width - size), rng.randint(0, height - size)
            gap = size * 0.12
            if all(abs(x - bx) >= size + gap or abs(y - by) >= size + gap for bx, by in boxes):
                boxes.append((x, y))
                if len(boxes) == count:
                    return size, boxes
    raise RuntimeError("could not place items")  # pragma: no cover - sizes above always fit


def render(spec: Spec, rng: random.Random, mask_share: float = 0.0) -> Image.Image:
    """The picture for a spec: random size (160-640 px, aspect <= 2:1), background, layout, rotation.

    `mask_share` > 0 blends the picture towards its silhouette mask (white items on black), for the
    trainer's mask curriculum; it draws nothing from `rng`, so the picture's layout is unchanged."""
    width = rng.randint(160, 640)
    height = min(640, max(160, round(width * rng.uniform(0.5, 2.0))))
    size, boxes = _place(spec.count, width, height, rng)
    fill = _fill(spec, size, rng)
    mask = _silhouette(spec.category, size)
    angle = rng.uniform(-12, 12)
    if abs(angle) > 0.5:  # identical items: one rotation for all of them
        mask = mask.rotate(angle, resample=Image.Resampling.BILINEAR)
        centre = fill.getpixel((size // 2, size // 2))
        fill = fill.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=centre)
    bg = _background(width, height, [COLOUR_RGB[spec.colour]], rng)
    for x, y in boxes:
        bg.paste(fill, (x, y), mask)
    if mask_share <= 0:
        return bg
    silhouettes = Image.new("RGB", (width, height), (0, 0, 0))
    for x, y in boxes:
        silhouettes.paste((255, 255, 255), (x, y, x + size, y + size), mask)
    return Image.blend(bg, silhouettes, min(1.0, mask_share))


# --- splits and samples -----------------------------------------------------------------------------
def _rng(split: str, seed: int, index: int) -> random.Random:
    digest = hashlib.blake2b(f"{split}:{_SPLIT_SALT[split]}:{seed}:{index}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


_BASE_TRIPLES = [(c, k, p) for c in range(len(CATEGORIES)) for k in range(len(COLOURS)) for p in range(4)]
_TRAIN_TRIPLES = [t for t in _BASE_TRIPLES if not is_held_out(*t)]
_HELDOUT_TRIPLES = [t for t in _BASE_TRIPLES if is_held_out(*t)]
_BY_OCCASION = {o: [t for t in _TRAIN_TRIPLES if occasion(*t) == o] for o in range(len(OCCASIONS))}


def sample_spec(split: str, rng: random.Random, balance_occasions: float = 0.0) -> Spec:
    """A random spec for a split. `balance_occasions` (train only) is the share of pictures drawn
    occasion-first, so the rare rules (business is 5% of uniform triples) are seen often enough."""
    if split == "heldout":
        triple = rng.choice(_HELDOUT_TRIPLES)
    elif split == "adapter":
        triple = (SUNGLASSES, rng.randrange(10), rng.randrange(4))
    elif split in ("train", "test"):
        if split == "train" and rng.random() < balance_occasions:
            triple = rng.choice(_BY_OCCASION[rng.randrange(len(OCCASIONS))])
        else:
            triple = rng.choice(_TRAIN_TRIPLES)
    else:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return Spec(*triple, count=rng.randint(1, 3))


def make_sample(split: str, seed: int, index: int, qtype: str | None = None, lang: str | None = None,
                balance_occasions: float = 0.0, phrasing: int = 0, task: str = "qa") -> Sample:
    """Sample `index` of a split: by default question types and languages cycle evenly.

    `paraphrase` is the `test` sample asked in a held-out wording (`questions.held_out_question`):
    same picture, same answer. `task` "json" or "unanswerable" asks that task about the split's
    pictures instead (languages alternate), in a training wording drawn for the sample, or a
    held-out one on `paraphrase`. Wordings are drawn from their own random stream, so the picture
    and answer of sample `index` never depend on how it is asked."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    held_out = split == "paraphrase"
    if held_out:
        split = "test"
    rng = _rng(split, seed, index)
    wording_rng = random.Random(f"wording:{split}:{seed}:{index}")
    spec = sample_spec(split, rng, balance_occasions)
    if task == "qa":
        qtype = qtype or QUESTION_TYPES[index % len(QUESTION_TYPES)]
        lang = lang or LANGS[(index // len(QUESTION_TYPES)) % len(LANGS)]
    else:
        qtype, lang = task, lang or LANGS[index % len(LANGS)]
    if held_out:
        question, answer = held_out_question(spec, qtype, lang, rng, wording_rng)
    elif task == "qa":
        question, answer = make_question(spec, qtype, lang, rng, phrasing)
    else:
        from vqaserve.train.questions import training_template

        template = training_template(qtype, lang, wording_rng)[0]
        question, answer = make_question(spec, qtype, lang, rng, template=template)
    return Sample(render(spec, rng), question, answer, qtype, lang, spec)


def png_bytes(image: Image.Image, compress_level: int = 1) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=compress_level)  # files are regenerated, not archived
    return buf.getvalue()


def answers(split: str, n: int = 300, seed: int = 0) -> list[str]:
    """The answers to every question type in both languages about `n` random specs of a split, with
    no pictures drawn: the words a model trained on the split must be able to say."""
    rng = random.Random(f"answers:{split}:{seed}")
    specs = [sample_spec(split, rng) for _ in range(n)]
    return [make_question(spec, qtype, lang, rng)[1] for spec in specs
            for qtype in (*QUESTION_TYPES, *TASK_TYPES) for lang in LANGS]


def iter_samples(split: str, n: int, seed: int, phrasing: int = 0, task: str = "qa") -> Iterator[Sample]:
    for index in range(n):
        yield make_sample(split, seed, index, phrasing=phrasing, task=task)


def write_split(split: str, n: int, seed: int, out: str | Path, progress: bool = False,
                phrasing: int = 0, task: str = "qa") -> Path:
    """Write `out/data.jsonl` and `out/images/` (one picture per question). Returns the jsonl path.
    `phrasing` asks every question in that wording (PHRASINGS index); `paraphrase` sets its own.
    Lines of the "json" task carry the attribute `schema` that eval asks for with response_format."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    path = out / "data.jsonl"
    samples = iter_samples(split, n, seed, phrasing, task)
    if progress:
        from tqdm import tqdm

        samples = tqdm(samples, total=n, desc=f"synth {split}", unit="img")
    with path.open("w", encoding="utf-8") as fh:
        for index, s in enumerate(samples):
            name = f"images/{index:06d}.png"
            (out / name).write_bytes(png_bytes(s.image))
            row: dict[str, Any] = {"image": name, "question": s.question, "answer": s.answer,
                                   "type": s.type, "lang": s.lang}
            if s.type == "json":
                row["schema"] = attribute_schema()
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path

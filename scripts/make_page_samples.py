"""Regenerate the web page's sample pictures: src/vqaserve/server/static/samples/*.png + samples.json.

    .venv/bin/python scripts/make_page_samples.py [--out DIR]

Six catalogue pictures drawn by the project's own renderer (vqaserve.train.synthetic.render), one
item each, from fixed specs and seeds, so a rerun writes the same pixels. The page offers them to
newcomers when the bundled shop-toy model is served. Each seed was picked (among the first fourteen)
so that shop-toy names the category, colour and description of its picture correctly, with the item
large enough to see in a thumbnail: a demo should show what the model does know (its accuracy on
unseen pictures is in docs/eval.md, not here). All specs are training combinations, never the
catalogue's held-out ones.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from vqaserve.train.catalogue import CATEGORIES, COLOURS, PATTERNS, Spec, is_held_out
from vqaserve.train.synthetic import render

OUT = Path(__file__).resolve().parents[1] / "src" / "vqaserve" / "server" / "static" / "samples"
MANIFEST = "samples.json"

# (category, colour, pattern) by name, and the seed of the picture's layout and background.
SAMPLES: list[tuple[str, str, str, int]] = [
    ("jacket", "blue", "plain", 1),
    ("mug", "red", "dotted", 8),
    ("dress", "pink", "plain", 0),
    ("shoe", "green", "checked", 3),
    ("hat", "yellow", "striped", 0),
    ("handbag", "black", "plain", 1),
]


def _index(names: list[tuple[str, str]], name: str) -> int:
    return [english for english, _ in names].index(name)


def write_samples(out: Path = OUT) -> list[dict[str, str]]:
    """Write every sample picture and the manifest the server reads; returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = []
    for category, colour, pattern, seed in SAMPLES:
        spec = Spec(_index(CATEGORIES, category), _index(COLOURS, colour), _index(PATTERNS, pattern), count=1)
        if is_held_out(spec.category, spec.colour, spec.pattern):
            raise SystemExit(f"{category}/{colour}/{pattern} is a held-out combination: pick another")
        file = f"{category}.png"
        # optimize: the files are committed and sent to every page that shows them.
        render(spec, random.Random(seed)).save(out / file, format="PNG", optimize=True)
        manifest.append({"file": file, "alt": f"sample catalogue picture: a {pattern} {colour} {category}",
                         "category": category, "colour": colour, "pattern": pattern})
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder to write to (default: {OUT})")
    args = parser.parse_args()
    for entry in write_samples(args.out):
        print(args.out / entry["file"], "-", entry["alt"])


if __name__ == "__main__":
    main()

"""The synthetic shop catalogue's vocabulary and rules (docs: /SHOP_CATALOGUE.md): categories,
colours, patterns, occasions, the held-out rule and the occasion rule. Pictures are drawn in
`synthetic`, questions asked in `questions`."""

from __future__ import annotations

from dataclasses import dataclass

# --- vocabulary (index order is part of the held-out rule: do not reorder) -------------------------
CATEGORIES: list[tuple[str, str]] = [
    ("t-shirt", "T恤"), ("trousers", "裤子"), ("dress", "连衣裙"), ("jacket", "外套"),
    ("hat", "帽子"), ("shoe", "鞋"), ("handbag", "手提包"), ("mug", "杯子"),
]
SUNGLASSES = 8  # adapter-only category index
ALL_CATEGORIES: list[tuple[str, str]] = [*CATEGORIES, ("sunglasses", "太阳镜")]
COLOURS: list[tuple[str, str]] = [
    ("red", "红色"), ("orange", "橙色"), ("yellow", "黄色"), ("green", "绿色"), ("blue", "蓝色"),
    ("purple", "紫色"), ("pink", "粉色"), ("brown", "棕色"), ("black", "黑色"), ("white", "白色"),
]
COLOUR_RGB: list[tuple[int, int, int]] = [
    (210, 30, 35), (245, 130, 20), (245, 215, 30), (40, 160, 60), (35, 80, 200),
    (130, 50, 170), (245, 150, 190), (120, 72, 35), (25, 25, 25), (245, 245, 245),
]
PATTERNS: list[tuple[str, str]] = [
    ("plain", "纯色"), ("striped", "条纹"), ("dotted", "波点"), ("checked", "格子"),
]
OCCASIONS: list[tuple[str, str]] = [
    ("home", "居家"), ("party", "派对"), ("business", "商务"), ("sport", "运动"), ("casual", "休闲"),
]

def attribute_schema() -> dict[str, object]:
    """The JSON schema of a catalogue item's attributes (structured output: docs/api.md)."""
    return {
        "type": "object",
        "properties": {
            "category": {"enum": [c for c, _ in CATEGORIES]},
            "color": {"enum": [c for c, _ in COLOURS]},
            "pattern": {"enum": [p for p, _ in PATTERNS]},
            "occasions": {"type": "array", "items": {"enum": [o for o, _ in OCCASIONS]},
                          "minItems": 1, "maxItems": 2},
        },
        "required": ["category", "color", "pattern", "occasions"], "additionalProperties": False}



def is_held_out(category: int, colour: int, pattern: int) -> bool:
    """The catalogue's held-out triples: never in any training picture."""
    return (category + 2 * colour + 3 * pattern) % 9 == 0


def occasion(category: int, colour: int, pattern: int) -> int:
    """Index into OCCASIONS: the first rule of the catalogue page that matches."""
    cat = ALL_CATEGORIES[category][0]
    col = COLOURS[colour][0]
    if cat == "mug":
        return 0
    if cat in ("dress", "handbag") and col in ("red", "pink", "purple"):
        return 1
    if (cat in ("jacket", "trousers", "shoe", "handbag") and pattern == 0
            and col in ("black", "white", "brown", "blue")):
        return 2
    if cat in ("hat", "shoe") and col in ("orange", "yellow", "green"):
        return 3
    return 4


@dataclass(frozen=True)
class Spec:
    """What one picture shows."""

    category: int
    colour: int
    pattern: int
    count: int


"""What the synthetic catalogue asks and the exact answers: question types, the wordings (primary,
training paraphrases, held-out paraphrases) and the answer rules of /SHOP_CATALOGUE.md."""

from __future__ import annotations

import random

from vqaserve.train.catalogue import ALL_CATEGORIES, COLOURS, OCCASIONS, PATTERNS, Spec, occasion

QUESTION_TYPES: tuple[str, ...] = ("category", "color", "pattern", "yesno", "occasion", "count", "describe")
LANGS: tuple[str, ...] = ("en", "zh")


def describe(spec: Spec, lang: str) -> str:
    cat, col, pat = ALL_CATEGORIES[spec.category], COLOURS[spec.colour], PATTERNS[spec.pattern]
    if lang == "en":
        words = [col[0]] + ([pat[0]] if spec.pattern else []) + [cat[0]]
        return "a " + " ".join(words)  # the catalogue fixes the article: always "a"
    return "一件" + col[1] + (pat[1] if spec.pattern else "") + cat[1]


# Question wordings per type, (English, Chinese): index 0 is the primary phrasing (what the test,
# heldout and adapter splits ask), 1 and 2 the training paraphrases of the catalogue page. `{cat}`
# is the item's category, `{c}` the colour asked about, `{verb}` the Chinese verb for using the item.
PHRASINGS: dict[str, list[tuple[str, str]]] = {
    "category": [("What is this product?", "这是什么商品？"), ("What is this?", "这是什么？"),
                 ("What kind of item is this?", "这是什么东西？")],
    "color": [("What color is it?", "这是什么颜色？"), ("What colour is this?", "它是什么颜色的？"),
              ("Which color is this item?", "这件商品是什么颜色？")],
    "pattern": [("What pattern does it have?", "这是什么图案？"), ("What is the pattern?", "上面是什么花纹？"),
                ("What pattern is on this item?", "它是什么图案的？")],
    "yesno": [("Is it {c}?", "它是{c}的吗？"), ("Is this {c}?", "这是{c}的吗？"),
              ("Is the item {c}?", "这件商品是{c}的吗？")],
    "occasion": [("What occasion is it suitable for?", "适合什么场合？"),
                 ("What occasion is this {cat} suitable for?", "这件{cat}适合什么场合{verb}？"),
                 ("What occasions does this suit?", "适合在什么场合使用？")],
    "count": [("How many items are there?", "图中有几件商品？"), ("How many are there?", "一共有几件？"),
              ("How many products are in the picture?", "有多少件商品？")],
    "describe": [("Describe this product.", "描述一下这件商品。"), ("Describe it.", "描述一下。"),
                 ("Give a short description of this product.", "简单描述这件商品。")],
}
# Held-out phrasings (the `paraphrase` split): never in training, nor in the tokenizer's corpus.
HELD_OUT_PHRASINGS: dict[str, tuple[str, str]] = {
    "category": ("What am I looking at?", "图里是什么商品？"),
    "color": ("What is the color of this product?", "颜色是什么？"),
    "pattern": ("Which pattern does it have?", "图案是什么？"),
    "yesno": ("Is this product {c}?", "是{c}的吗？"),
    "occasion": ("What is this {cat} good for?", "这件{cat}适合哪种场合？"),
    "count": ("How many items do you see?", "数一数有几件？"),
    "describe": ("Please describe it.", "请描述它。"),
}
HELD_OUT = -1  # `phrasing` value that asks the held-out wording
_WEARABLES = ("t-shirt", "trousers", "dress", "jacket", "hat", "shoe")


def training_questions() -> list[str]:
    """Every training wording, filled in for every category and colour (for the tokenizer's corpus)."""
    out: dict[str, None] = {}
    for qtype, wordings in PHRASINGS.items():
        for phrasing in range(len(wordings)):
            for lang in LANGS:
                for category in range(len(ALL_CATEGORIES)):
                    for colour in range(len(COLOURS)):
                        out[_wording(qtype, lang, phrasing, category, colour)] = None
    return list(out)


def training_phrasing(rng: random.Random) -> int:
    """The wording a training question uses: the primary one half the time, else a paraphrase."""
    return 0 if rng.random() < 0.5 else rng.randint(1, len(PHRASINGS["category"]) - 1)


def _wording(qtype: str, lang: str, phrasing: int, category: int, colour: int | None = None) -> str:
    i = 0 if lang == "en" else 1
    template = HELD_OUT_PHRASINGS[qtype][i] if phrasing == HELD_OUT else PHRASINGS[qtype][phrasing][i]
    cat = ALL_CATEGORIES[category]
    verb = "穿" if cat[0] in _WEARABLES else ("戴" if cat[0] == "sunglasses" else "用")
    return template.format(cat=cat[i], c="" if colour is None else COLOURS[colour][i], verb=verb)


def make_question(spec: Spec, qtype: str, lang: str, rng: random.Random, phrasing: int = 0) -> tuple[str, str]:
    """(question, exact answer) for one question type and language, as the catalogue page says.

    `phrasing` picks the wording (PHRASINGS index, or HELD_OUT); it never changes the answer, nor what
    is drawn from `rng`, so a sample asked another way is the same picture with the same answer."""
    if qtype not in PHRASINGS:
        raise ValueError(f"unknown question type {qtype!r}; use one of {', '.join(QUESTION_TYPES)}")
    i = 0 if lang == "en" else 1
    asked = None
    if qtype == "yesno":
        # Half the time ask about the true colour, so "yes" and "no" are equally likely.
        asked = spec.colour if rng.random() < 0.5 else rng.choice([c for c in range(10) if c != spec.colour])
    question = _wording(qtype, lang, phrasing, spec.category, asked)
    if qtype == "category":
        answer = ALL_CATEGORIES[spec.category][i]
    elif qtype == "color":
        answer = COLOURS[spec.colour][i]
    elif qtype == "pattern":
        answer = PATTERNS[spec.pattern][i]
    elif qtype == "yesno":
        answer = ("yes", "是")[i] if asked == spec.colour else ("no", "不是")[i]
    elif qtype == "occasion":
        answer = OCCASIONS[occasion(spec.category, spec.colour, spec.pattern)][i]
    elif qtype == "count":
        answer = str(spec.count) + ("" if i == 0 else "件")
    else:
        answer = describe(spec, lang)
    return question, answer


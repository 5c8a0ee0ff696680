"""What the synthetic catalogue asks and the exact answers: question types, the wordings (primary,
training paraphrases, held-out paraphrases, and the composed ones of `wordings`) and the answer rules
of /SHOP_CATALOGUE.md; plus two tasks: the attributes as JSON, and questions a photo cannot answer."""

from __future__ import annotations

import json
import random

from vqaserve.train.catalogue import (
    ALL_CATEGORIES,
    COLOURS,
    OCCASIONS,
    PATTERNS,
    Spec,
    attribute_schema,
    occasion,
)

QUESTION_TYPES: tuple[str, ...] = ("category", "color", "pattern", "yesno", "occasion", "count", "describe")
# Tasks beside the catalogue's seven question types. "json": the attributes as the object
# `catalogue.attribute_schema` describes; "unanswerable": price, stock, sizes, material, delivery,
# returns, which no photo shows, answered with one fixed sentence (REFUSALS).
TASK_TYPES: tuple[str, ...] = ("json", "unanswerable")
ALL_TYPES: tuple[str, ...] = QUESTION_TYPES + TASK_TYPES
LANGS: tuple[str, ...] = ("en", "zh")

REFUSALS: dict[str, str] = {
    "en": "I can't tell that from the photo; please check the product page or ask our staff.",
    "zh": "从照片上看不出来，请查看商品页面或咨询客服。",
}
# The tasks' own first wordings (the API docs ask the first); more come from `wordings`.
TASK_PRIMARY: dict[str, tuple[str, str]] = {
    "json": ("Describe this product as JSON.", "用JSON描述这件商品。"),
    "unanswerable": ("How much is it?", "这个多少钱？"),
}


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


# Training questions: the primary wording 30% of the time, a catalogue paraphrase 20%, a composed
# wording (`wordings`) otherwise; a tenth of the composed ones with a typo. The tasks: their first
# wording 20% of the time, else composed.
PRIMARY_SHARE, PARAPHRASE_SHARE, TASK_PRIMARY_SHARE, TYPO_SHARE = 0.3, 0.2, 0.2, 0.1
# The `paraphrase` split: the catalogue's held-out wording 30% of the time, else a held-out
# composition, 15% of those with a typo.
FIXED_HELD_OUT_SHARE, HELD_OUT_TYPO_SHARE = 0.3, 0.15


def fixed_wordings(qtype: str, lang: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The catalogue's own templates of a type: (primary and paraphrases, the held-out one)."""
    i = LANGS.index(lang)
    if qtype in TASK_PRIMARY:
        return (TASK_PRIMARY[qtype][i],), ()
    return tuple(w[i] for w in PHRASINGS[qtype]), (HELD_OUT_PHRASINGS[qtype][i],)


def training_questions() -> list[str]:
    """Training wordings for the tokenizer's corpus: the catalogue's own ones filled in for every
    category and colour, and composed ones that between them use every trained part."""
    from vqaserve.train.wordings import corpus_lines

    out: dict[str, None] = {}
    for wordings in PHRASINGS.values():
        for phrasing in range(len(wordings)):
            for lang in LANGS:
                for category in range(len(ALL_CATEGORIES)):
                    for colour in range(len(COLOURS)):
                        out[fill(wordings[phrasing][LANGS.index(lang)], lang, category, colour)] = None
    for k, (lang, template) in enumerate(corpus_lines()):
        out[fill(template, lang, k % len(ALL_CATEGORIES), k % len(COLOURS))] = None
    return list(out)


def training_template(qtype: str, lang: str, rng: random.Random) -> tuple[str, bool]:
    """(template, composed?) of a training question: see PRIMARY_SHARE and the rest."""
    from vqaserve.train.wordings import draw

    r = rng.random()
    if qtype in TASK_PRIMARY:
        if r < TASK_PRIMARY_SHARE:
            return TASK_PRIMARY[qtype][LANGS.index(lang)], False
    elif r < PRIMARY_SHARE:
        return PHRASINGS[qtype][0][LANGS.index(lang)], False
    elif r < PRIMARY_SHARE + PARAPHRASE_SHARE:
        return PHRASINGS[qtype][rng.randint(1, len(PHRASINGS[qtype]) - 1)][LANGS.index(lang)], False
    return draw(qtype, lang, rng, held_out=False), True


def training_question(spec: Spec, qtype: str, lang: str, rng: random.Random) -> tuple[str, str]:
    """A training (question, answer): a training wording, sometimes with a typo."""
    from vqaserve.train.wordings import UNKNOWN_AROUND_SHARE, around_unknown

    template, composed = training_template(qtype, lang, rng)
    question, answer = make_question(spec, qtype, lang, rng, template=template)
    if composed and rng.random() < TYPO_SHARE:
        question = _typo(question, spec, lang, rng)
    if composed and rng.random() < UNKNOWN_AROUND_SHARE:
        question = around_unknown(question, lang, rng)
    return question, answer


def held_out_question(spec: Spec, qtype: str, lang: str, rng: random.Random,
                      wording_rng: random.Random) -> tuple[str, str]:
    """A `paraphrase`-split (question, answer). The wording comes from `wording_rng` alone, so the
    picture and answer drawn from `rng` are those of the same `test` sample."""
    from vqaserve.train.wordings import draw

    composed = qtype in TASK_TYPES or wording_rng.random() >= FIXED_HELD_OUT_SHARE
    template = draw(qtype, lang, wording_rng, held_out=True) if composed else None
    question, answer = make_question(spec, qtype, lang, rng, HELD_OUT, template)
    if composed and wording_rng.random() < HELD_OUT_TYPO_SHARE:
        question = _typo(question, spec, lang, wording_rng)
    return question, answer


def _typo(question: str, spec: Spec, lang: str, rng: random.Random) -> str:
    from vqaserve.train.wordings import typo

    i = LANGS.index(lang)
    keep = tuple(names[i] for names in (*COLOURS, *ALL_CATEGORIES))  # a slip there changes the question
    return typo(question, lang, rng, keep)


def fill(template: str, lang: str, category: int, colour: int | None = None) -> str:
    """A template with the item's category, the colour asked about and the Chinese verb of use."""
    i = LANGS.index(lang)
    cat = ALL_CATEGORIES[category]
    verb = "穿" if cat[0] in _WEARABLES else ("戴" if cat[0] == "sunglasses" else "用")
    return template.format(cat=cat[i], c="" if colour is None else COLOURS[colour][i], verb=verb)


def json_answer(spec: Spec) -> str:
    """The attributes as constrained decoding writes them for `attribute_schema`: keys in the
    schema's order, ", " and ": " between items (xgrammar's form without free whitespace)."""
    keys = list(attribute_schema()["properties"])  # type: ignore[call-overload]
    values = [ALL_CATEGORIES[spec.category][0], COLOURS[spec.colour][0], PATTERNS[spec.pattern][0],
              [OCCASIONS[occasion(spec.category, spec.colour, spec.pattern)][0]]]
    return json.dumps(dict(zip(keys, values, strict=True)))


def make_question(spec: Spec, qtype: str, lang: str, rng: random.Random, phrasing: int = 0,
                  template: str | None = None) -> tuple[str, str]:
    """(question, exact answer) for one question type and language, as the catalogue page says.

    `phrasing` picks the catalogue's wording (PHRASINGS index, or HELD_OUT), `template` any other
    (`wordings`); neither changes the answer nor what is drawn from `rng`, so a sample asked another
    way is the same picture with the same answer."""
    if qtype not in ALL_TYPES:
        raise ValueError(f"unknown question type {qtype!r}; use one of {', '.join(ALL_TYPES)}")
    i = LANGS.index(lang)
    asked = None
    if qtype == "yesno":
        # Half the time ask about the true colour, so "yes" and "no" are equally likely.
        asked = spec.colour if rng.random() < 0.5 else rng.choice([c for c in range(10) if c != spec.colour])
    if template is None:
        template = (TASK_PRIMARY[qtype][i] if qtype in TASK_PRIMARY
                    else HELD_OUT_PHRASINGS[qtype][i] if phrasing == HELD_OUT else PHRASINGS[qtype][phrasing][i])
    question = fill(template, lang, spec.category, asked)
    if qtype == "json":
        return question, json_answer(spec)
    if qtype == "unanswerable":
        return question, REFUSALS[lang]
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


"""The in-code text the project's tokenizer is trained on: the shop catalogue plus everyday chat.

Every English and Chinese word and phrase of docs SHOP_CATALOGUE.md (questions, answers, counts,
descriptions, the adapter-only sunglasses) appears here, so the tokenizer learns them as few tokens
and the bundled model can say them. The questions come from the catalogue's code (its training
wordings and composed training questions that use every trained part, none of the held-out ones or
their words); so do the two tasks' answers (the attributes as JSON, the "can't tell" sentences).
The rest is plain data.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import product

CATEGORIES_EN = ["t-shirt", "trousers", "dress", "jacket", "hat", "shoe", "handbag", "mug", "sunglasses"]
CATEGORIES_ZH = ["T恤", "裤子", "连衣裙", "外套", "帽子", "鞋", "手提包", "杯子", "太阳镜"]
COLOURS_EN = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"]
COLOURS_ZH = ["红色", "橙色", "黄色", "绿色", "蓝色", "紫色", "粉色", "棕色", "黑色", "白色"]
PATTERNS_EN = ["plain", "striped", "dotted", "checked"]
PATTERNS_ZH = ["纯色", "条纹", "波点", "格子"]
OCCASIONS_EN = ["home", "party", "business", "sport", "casual"]
OCCASIONS_ZH = ["居家", "派对", "商务", "运动", "休闲"]


CHAT_EN = [
    "You are a helpful assistant.", "Hello! How can I help you today?", "Thank you, that is very helpful.",
    "What occasions does this jacket suit?", "Is this dress good for a party?",
    "Please describe the picture in one sentence.", "The image shows a product on a plain background.",
    "I am not sure what this is.", "Sorry, I can't help with that.", "Yes, it is.", "No, it is not.",
    "What is in this image? Can you see any text or people?", "There is one item in the picture.",
    "The quick brown fox jumps over the lazy dog.", "This is a photo of a customer's order.",
    "Which size should I buy? The colour looks different in the photo.", "answer in one word",
    "a, b, c; 1, 2, 3, 4, 5, 6, 7, 8, 9, 10. (ok) [yes] {no} - \"quoted\" 'single' ...",
]
CHAT_ZH = [
    "你好！今天有什么可以帮你的？", "谢谢，这很有帮助。", "这件外套适合什么场合穿？",
    "这条连衣裙适合参加派对吗？", "请用一句话描述这张图片。", "图片里是一件商品，背景很简单。",
    "我不确定这是什么。", "抱歉，我无法回答这个问题。",
    "是的。", "不是。", "图片里有什么？", "图中有一件商品。", "这是顾客订单的照片。", "我应该买哪个尺码？",
    "颜色在照片里看起来不一样。", "请用一个词回答。", "一，二，三。好的！",
]


def _english() -> Iterator[str]:
    for cat, colour, pattern in product(CATEGORIES_EN, COLOURS_EN, PATTERNS_EN):
        adjective = colour if pattern == "plain" else f"{colour} {pattern}"
        yield f"Describe this product. a {adjective} {cat}"
        yield f"What is this product? {cat} What pattern does it have? {pattern}"
    for colour in COLOURS_EN:
        yield f"Is it {colour}? yes"
        yield f"Is it {colour}? no"
        yield f"What color is it? {colour}"
    for occasion in OCCASIONS_EN:
        yield f"What occasion is it suitable for? {occasion}"
    for n in ("1", "2", "3"):
        yield f"How many items are there? {n}"


def _chinese() -> Iterator[str]:
    for cat, colour, pattern in product(CATEGORIES_ZH, COLOURS_ZH, PATTERNS_ZH):
        adjective = colour if pattern == "纯色" else f"{colour}{pattern}"
        yield f"描述一下这件商品。一件{adjective}{cat}"
        yield f"这是什么商品？{cat}这是什么图案？{pattern}"
    for colour in COLOURS_ZH:
        yield f"它是{colour}的吗？是"
        yield f"它是{colour}的吗？不是"
        yield f"这是什么颜色？{colour}"
    for occasion in OCCASIONS_ZH:
        yield f"适合什么场合？{occasion}"
    for n in ("1", "2", "3"):
        yield f"图中有几件商品？{n}件"


def _answers() -> Iterator[str]:
    """Each answer alone on a line, as it starts an assistant turn (no leading space)."""
    yield from [*CATEGORIES_EN, *COLOURS_EN, *PATTERNS_EN, *OCCASIONS_EN, "yes", "no", "1", "2", "3"]
    yield from [*CATEGORIES_ZH, *COLOURS_ZH, *PATTERNS_ZH, *OCCASIONS_ZH, "是", "不是", "1件", "2件", "3件"]


def _task_answers() -> Iterator[str]:
    """The attributes of every catalogue item as JSON, and the "can't tell" sentences."""
    from vqaserve.train.catalogue import CATEGORIES, COLOURS, PATTERNS, Spec
    from vqaserve.train.questions import REFUSALS, json_answer

    for category, colour, pattern in product(range(len(CATEGORIES)), range(len(COLOURS)), range(len(PATTERNS))):
        yield json_answer(Spec(category, colour, pattern, 1))
    yield from list(REFUSALS.values()) * 3


def corpus() -> list[str]:
    """Deterministic training text (order matters for reproducible merges)."""
    from vqaserve.train.questions import training_questions

    lines = [*_english(), *_chinese(), *training_questions(), *(list(_answers()) * 3), *_task_answers()]
    # Chat text repeated so its common words earn merges next to the catalogue's.
    lines += (CHAT_EN + CHAT_ZH) * 4
    return lines

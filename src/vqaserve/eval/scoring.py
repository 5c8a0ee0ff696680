"""How an answer is scored (SHOP_CATALOGUE.md): exact match after trimming whitespace, lower-casing
English and dropping a final period / 。; an answer asked for with a JSON schema field by field; and
whether an answer is the catalogue's "can't tell from the photo" sentence."""

from __future__ import annotations

import json
from typing import Any


def normalize_answer(text: str) -> str:
    text = text.strip()
    if text.endswith((".", "。")):
        text = text[:-1].rstrip()
    return text.lower()  # lower-casing leaves Chinese unchanged


def is_correct(prediction: str, gold: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(gold)


def field_scores(prediction: str, gold: str) -> dict[str, bool]:
    """Each top-level field of the gold JSON object: does the prediction have that value? A
    prediction that is not a JSON object gets every field wrong."""
    expected = json.loads(gold)
    if not isinstance(expected, dict):
        raise ValueError("a JSON answer must be an object to be scored field by field")
    try:
        got: Any = json.loads(prediction)
    except json.JSONDecodeError:
        got = None
    if not isinstance(got, dict):
        return dict.fromkeys(expected, False)
    return {key: key in got and got[key] == value for key, value in expected.items()}


def refusal_language(prediction: str) -> str | None:
    """The language whose "can't tell from the photo" sentence this answer is, or None."""
    from vqaserve.train.questions import REFUSALS

    said = normalize_answer(prediction)
    return next((lang for lang, sentence in REFUSALS.items() if said == normalize_answer(sentence)), None)

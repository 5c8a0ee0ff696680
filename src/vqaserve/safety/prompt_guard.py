"""Prompt guard: user text that spells model control tokens is neutralised; over-long text is refused.

Tokenizers match added/special tokens ("<|im_start|>", "<|image_pad|>", "<think>" ...) as exact
strings in the raw text. A U+2060 WORD JOINER inserted after the opening "<" breaks every such match,
so the text is tokenized as ordinary characters (the model still "reads" the same glyphs), and a
forged "<|image_pad|>" can no longer desynchronise image placeholders from image features (the vLLM
crash). Look-alikes a normalizing tokenizer could fold into "<", "|" or ">" (full-width, small and
other compatibility forms) are turned into the ASCII characters first, so they get the same treatment.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable

from vqaserve.errors import InvalidRequest

WORD_JOINER = "\u2060"
# Qwen2/2.5/3-VL added tokens that are not of the <|...|> form.
TAG_TOKENS = ("<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")


@functools.cache
def _lookalikes() -> dict[int, str]:
    """Every BMP character whose NFKC form is exactly '<', '|' or '>', other than those themselves."""
    table: dict[int, str] = {}
    for code in range(0xA0, 0x10000):
        ch = chr(code)
        folded = unicodedata.normalize("NFKC", ch)
        if folded in ("<", "|", ">") and ch != folded:
            table[code] = folded
    return table


class ControlTokenNeutraliser:
    """Puts a WORD JOINER after the first character of every spelling of `tokens` in a text.

    Used twice: the guard's policy below (every "<|" prefix and the tags, any case, look-alikes
    folded first) and the in-process engine's own check (exactly its tokenizer's special tokens,
    nothing else touched: hf_generation.to_messages).
    """

    def __init__(self, tokens: Iterable[str], *, ignore_case: bool = False,
                 fold_lookalikes: bool = False) -> None:
        # Each alternative consumes only the token's first character and looks ahead for the rest, so
        # their order does not matter and overlapping spellings are each broken too.
        alternatives = [re.escape(t[0]) + "(?=" + re.escape(t[1:]) + ")" for t in sorted(set(tokens)) if t]
        self._pattern = re.compile("|".join(alternatives), re.IGNORECASE if ignore_case else 0) \
            if alternatives else None
        self._fold = _lookalikes() if fold_lookalikes else None

    def __call__(self, text: str) -> str:
        if self._fold is not None:
            text = text.translate(self._fold)
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: m.group(0) + WORD_JOINER, text)


class ControlTokenGuard:
    """PromptGuard: `clean(text, field)` neutralises control-token spellings and enforces a length cap."""

    def __init__(self, max_chars: int = 4000, extra_tokens: Iterable[str] = ()) -> None:
        self.max_chars = max_chars
        tags = {*TAG_TOKENS, *(t for t in extra_tokens if t and not t.startswith("<|"))}
        # "<|" starts every Qwen special token; tags are listed. Case-insensitive: some tokenizers
        # lowercase before matching added tokens with normalized=True.
        self.neutralise = ControlTokenNeutraliser(("<|", *tags), ignore_case=True, fold_lookalikes=True)

    def clean(self, text: str, field: str) -> str:
        if len(text) > self.max_chars:
            raise InvalidRequest(f"{field}: text is {len(text):,} characters, over the {self.max_chars:,} "
                                 "character limit; shorten the question", param=field)
        return self.neutralise(text)

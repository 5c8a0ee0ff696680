"""Answers as JSON bytes with a schema version and their own key inside (never pickle).

`decode` returns None for anything it does not fully recognise (corrupt, foreign, old version, or
a value stored under another key), so the caller treats it as a miss and overwrites it. The key
inside the value is a second guard: even a reply read from the wrong request's connection can
never be served for this key.

The answer's confidence is stored with it, so a hit answers with the confidence it was given. An entry
written before confidence existed (no "confidence" field) is not recognised: it is answered afresh once
and overwritten, instead of answering without a confidence.
"""

from __future__ import annotations

import json
import math
from typing import Any

from vqaserve.cache.keys import CACHE_SCHEMA_VERSION
from vqaserve.types import Answer, Usage

MAGIC = "vqa-answer"
_FINISH = {"stop", "length"}  # content_filter answers are never stored


def _count(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def encode(key: str, answer: Answer) -> bytes:
    value = {"v": MAGIC, "schema": CACHE_SCHEMA_VERSION, "key": key, "text": answer.text,
             "model": answer.model, "finish_reason": answer.finish_reason,
             "prompt_tokens": answer.usage.prompt_tokens,
             "completion_tokens": answer.usage.completion_tokens, "confidence": answer.confidence}
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def decode(key: str, raw: bytes | str | None) -> Answer | None:
    if raw is None:
        return None
    try:
        value: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(value, dict) or value.get("v") != MAGIC:
        return None
    if value.get("schema") != CACHE_SCHEMA_VERSION or value.get("key") != key:
        return None
    text, model, finish = value.get("text"), value.get("model"), value.get("finish_reason")
    pt, ct = value.get("prompt_tokens"), value.get("completion_tokens")
    if not (isinstance(text, str) and isinstance(model, str) and finish in _FINISH):
        return None
    if not (isinstance(pt, int) and isinstance(ct, int) and _count(pt) and _count(ct)):
        return None
    conf = value.get("confidence", "missing")
    if not _confidence(conf):
        return None
    return Answer(text=text, model=model, finish_reason=finish, cache="hit",
                  usage=Usage(prompt_tokens=pt, completion_tokens=ct),
                  confidence=None if conf is None else float(conf))


def _confidence(c: object) -> bool:
    """null (the engine could not tell) or a probability."""
    if c is None:
        return True
    return isinstance(c, int | float) and not isinstance(c, bool) and math.isfinite(c) and 0.0 <= c <= 1.0

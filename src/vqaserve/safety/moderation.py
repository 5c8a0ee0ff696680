"""Output moderation: the OutputFilter / StreamGuard seams of pipeline.py, over a blocklist file.

Terms and text are compared after the same per-character normalization: NFKC (full-width and other
compatibility forms become plain letters), case folding, and removal of whitespace and zero-width
characters, so "Ｐｏｒｎｏｇｒａｐｈｙ", "P o r n o g r a p h y" and "porno\u200bgraphy" all match.
Matching is Aho-Corasick (pyahocorasick): thousands of terms cost the same as three.

Streaming: StreamGuard holds back only the tail that could still become a blocked term (the longest
tail that is a proper prefix of a term: at most longest-1 normalized characters), so a term split across
chunks is caught before any of it reaches the client, while clean text flows with little delay; the
held tail is released by flush().
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vqaserve.errors import ConfigError

if TYPE_CHECKING:
    from vqaserve.settings import Settings

DEFAULT_BLOCKLIST = Path(__file__).parents[1] / "data" / "blocklist.txt"
NORMALIZATION = "nfkc-casefold-nows-nozw/1"  # part of `version`: a new scheme invalidates the cache
# Zero-width and invisible formatting characters that hide a term without showing on screen.
ZERO_WIDTH = frozenset("\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180e\u200b\u200c"
                       "\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\u2061\u2062\u2063\u2064"
                       "\u2066\u2067\u2068\u2069\u206a\u206b\u206c\u206d\u206e\u206f\u3164\ufe00\ufe01"
                       "\ufe02\ufe03\ufe04\ufe05\ufe06\ufe07\ufe08\ufe09\ufe0a\ufe0b\ufe0c\ufe0d\ufe0e"
                       "\ufe0f\ufeff\uffa0")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


@lru_cache(maxsize=65536)
def fold_char(ch: str) -> str:
    """One character -> its normalized form ('' for whitespace and zero-width characters)."""
    if ch in ZERO_WIDTH or ch.isspace():
        return ""
    folded = unicodedata.normalize("NFKC", ch).casefold()
    return "".join(c for c in folded if not c.isspace() and c not in ZERO_WIDTH)


def fold(text: str) -> str:
    return "".join(fold_char(ch) for ch in text)


def load_terms(path: str | Path) -> list[str]:
    """A blocklist file (one term a line, '#' comments) -> distinct normalized terms."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        raise ConfigError("VQA_SAFETY_BLOCKLIST must name a readable UTF-8 text file, one term a line") \
            from None
    terms = {fold(line.strip()) for line in lines if line.strip() and not line.lstrip().startswith("#")}
    terms.discard("")
    return sorted(terms)


class _Matcher:
    def __init__(self, terms: list[str]) -> None:
        import ahocorasick

        self.longest = max((len(t) for t in terms), default=0)
        # Proper prefixes of terms: a stream only needs to hold back a tail that could still grow into one.
        self.prefixes = frozenset(t[:i] for t in terms for i in range(1, len(t)))
        self._automaton: Any = None
        if terms:
            automaton = ahocorasick.Automaton()
            for term in terms:
                automaton.add_word(term, term)
            automaton.make_automaton()
            self._automaton = automaton

    def first(self, folded: str, start: int = 0) -> str | None:
        """The first blocked term found in folded[start:], or None."""
        if self._automaton is None or start >= len(folded):
            return None
        for _end, term in self._automaton.iter(folded, start):
            return str(term)
        return None


class BlocklistFilter:
    """OutputFilter: is_blocked / refusal / stream_guard, and `version` for the cache key."""

    def __init__(self, terms: list[str], refusal_en: str = "Sorry, I can't help with that.",
                 refusal_zh: str = "抱歉，我无法回答这个问题。") -> None:
        self.terms = sorted({fold(t) for t in terms} - {""})
        self.refusal_en = refusal_en
        self.refusal_zh = refusal_zh
        self._matcher = _Matcher(self.terms)
        h = hashlib.sha256(NORMALIZATION.encode())
        for part in (*self.terms, "\x00", refusal_en, refusal_zh):
            h.update(part.encode() + b"\x00")
        self.version = "blocklist:" + h.hexdigest()[:16]

    @classmethod
    def from_settings(cls, settings: Settings) -> BlocklistFilter:
        s = settings.safety
        return cls(load_terms(s.blocklist or DEFAULT_BLOCKLIST), s.refusal_en, s.refusal_zh)

    def blocked_term(self, text: str) -> str | None:
        return self._matcher.first(fold(text))

    def is_blocked(self, text: str) -> bool:
        return self.blocked_term(text) is not None

    def refusal(self, question_text: str) -> str:
        """Chinese refusal for a question written in Chinese, English otherwise."""
        return self.refusal_zh if _CJK.search(question_text or "") else self.refusal_en

    def stream_guard(self) -> StreamGuard:
        return StreamGuard(self._matcher)


class StreamGuard:
    """Per-stream state: releases only text that no (future) blocked term can include."""

    def __init__(self, matcher: _Matcher) -> None:
        self._m = matcher
        self._text: list[str] = []  # original characters so far
        self._folded: list[str] = []  # normalized characters so far
        self._source: list[int] = []  # for each normalized character, the index of its original one
        self._released = 0  # original characters already handed out
        self.blocked = False

    def feed(self, delta: str) -> tuple[str, bool]:
        """Append a chunk; return (text now safe to send, blocked?). After a block, nothing more."""
        if self.blocked:
            return "", True
        before = len(self._folded)
        for ch in delta:
            self._text.append(ch)
            for f in fold_char(ch):
                self._folded.append(f)
                self._source.append(len(self._text) - 1)
        # Only matches that end in the new characters are new; they start at most longest-1 earlier.
        start = max(0, before - max(0, self._m.longest - 1))
        if self._m.first("".join(self._folded[start:])) is not None:
            self.blocked = True
            return "", True
        # A future match must start inside the longest tail that is a proper prefix of some term
        # (at most longest-1 characters); everything before that tail is safe to send now.
        keep = self._pending_prefix()
        safe_upto = len(self._text) if keep == 0 else self._source[len(self._folded) - keep]
        safe_upto = max(safe_upto, self._released)
        out = "".join(self._text[self._released:safe_upto])
        self._released = safe_upto
        return out, False

    def _pending_prefix(self) -> int:
        n = len(self._folded)
        tail = "".join(self._folded[max(0, n - (self._m.longest - 1)):])
        for size in range(len(tail), 0, -1):
            if tail[-size:] in self._m.prefixes:
                return size
        return 0

    def flush(self) -> tuple[str, bool]:
        """End of stream: the held-back tail (already checked in feed), unless blocked."""
        if self.blocked:
            return "", True
        out = "".join(self._text[self._released:])
        self._released = len(self._text)
        return out, False

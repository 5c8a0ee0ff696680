"""Output moderation (cases 22, 23): disguised terms, split across chunks, streaming hold-back."""

from __future__ import annotations

import random

import pytest

from vqaserve.safety.moderation import DEFAULT_BLOCKLIST, BlocklistFilter, fold, load_terms
from vqaserve.settings import Settings

pytestmark = pytest.mark.unit

DISGUISES = [
    "这是色情内容", "这很违法。", "如何破解软件",  # the three default Chinese terms
    "Pornography", "PORNOGRAPHY", "p o r n o g r a p h y", "porno\u200bgraphy", "porno\u2060graphy",
    "ｐｏｒｎｏｇｒａｐｈｙ",  # full-width
    "色\u200b情", "色 情", "违\ufeff法", "破\u00ad解",
    "ＨＥＮＴＡＩ", "hen\ttai", "make\u3000a bomb",  # ideographic space
]
CLEAN = ["This jacket suits formal occasions.", "这件外套适合正式场合穿。", "Top ornament, sixty pounds.",
         "The bomber jacket is black.", ""]


@pytest.fixture(scope="module")
def flt() -> BlocklistFilter:
    return BlocklistFilter.from_settings(Settings())


def stream(flt: BlocklistFilter, chunks: list[str]) -> tuple[str, bool]:
    """Feed chunks as a streaming client would see them: (everything released, blocked?)."""
    guard = flt.stream_guard()
    out = []
    for chunk in chunks:
        safe, blocked = guard.feed(chunk)
        out.append(safe)
        if blocked:
            return "".join(out), True
    tail, blocked = guard.flush()
    return "".join(out) + tail, blocked


def splits(text: str, rng: random.Random) -> list[list[str]]:
    """Every 2-way split plus random many-way splits (down to one character a chunk)."""
    out = [[text[:i], text[i:]] for i in range(len(text) + 1)]
    out.append(list(text))
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, max(2, len(text))), k=min(len(text) - 1, rng.randint(1, 5))))
        out.append([text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)])
    return out


def test_default_list_has_the_required_terms() -> None:
    terms = load_terms(DEFAULT_BLOCKLIST)
    assert {"违法", "破解", "色情"} <= set(terms)
    assert sum(t.isascii() for t in terms) >= 3


@pytest.mark.parametrize("text", DISGUISES)
def test_disguised_terms_blocked_non_streaming(flt: BlocklistFilter, text: str) -> None:
    assert flt.is_blocked(f"Answer: {text} end")


@pytest.mark.parametrize("text", DISGUISES)
def test_disguised_terms_blocked_in_every_split(flt: BlocklistFilter, text: str) -> None:
    rng = random.Random(text)
    full = f"Sure. {text} ok"
    for chunks in splits(full, rng):
        released, blocked = stream(flt, chunks)
        assert blocked, chunks
        # Not one normalized character of the term ever reached the client.
        assert not flt.is_blocked(released)
        term = flt.blocked_term(full)
        assert term is not None
        assert len(fold(released)) <= fold(full).index(term)  # released text ends before the term starts


@pytest.mark.parametrize("text", CLEAN)
def test_clean_text_passes_and_the_held_tail_is_released(flt: BlocklistFilter, text: str) -> None:
    assert not flt.is_blocked(text)
    rng = random.Random(0)
    for chunks in splits(text, rng) if text else [[""]]:
        released, blocked = stream(flt, chunks)
        assert not blocked
        assert released == text  # exact, including spaces and the held-back tail


def test_clean_text_is_not_held_back_needlessly(flt: BlocklistFilter) -> None:
    """Only a tail that could still grow into a term waits: 'the jacket is red' streams at once."""
    guard = flt.stream_guard()
    assert guard.feed("the jacket is red") == ("the jacket is red", False)
    safe, _ = guard.feed(" and porno")  # "porno" could become "pornography": held
    assert safe == " and " and guard.feed(" star")[0] == "porno star"
    assert guard.flush() == ("", False)


def test_hold_back_is_bounded(flt: BlocklistFilter) -> None:
    """A long clean answer flows: at most (longest term - 1) normalized characters are ever held."""
    guard = flt.stream_guard()
    longest = max(len(t) for t in flt.terms)
    sent = 0
    text = "word " * 200
    for i, ch in enumerate(text):
        safe, blocked = guard.feed(ch)
        assert not blocked
        sent += len(safe)
        assert len(fold(text[sent:i + 1])) <= longest - 1
    tail, _ = guard.flush()
    assert sent + len(tail) == len(text)


def test_refusal_language_and_version(tmp_path: object) -> None:
    base = BlocklistFilter.from_settings(Settings())
    assert base.refusal("这件外套适合什么场合穿？") == "抱歉，我无法回答这个问题。"
    assert base.refusal("What occasions does this jacket suit?") == "Sorry, I can't help with that."
    # version: a hash of the normalized list and the refusals (part of the cache key)
    assert BlocklistFilter(list(reversed(base.terms))).version == base.version
    assert BlocklistFilter([*base.terms, "ＰＯＲＮＯＧＲＡＰＨＹ"]).version == base.version  # same after folding
    assert BlocklistFilter([*base.terms, "newterm"]).version != base.version
    assert BlocklistFilter(base.terms, refusal_en="No.").version != base.version


def test_operator_list_and_thousands_of_terms(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "list.txt"
    terms = [f"secret{i:05d}" for i in range(5000)]
    path.write_text("# operator list\n\n" + "\n".join(terms) + "\nＦＯＯ  bar\n", encoding="utf-8")
    flt = BlocklistFilter.from_settings(Settings(safety={"blocklist": str(path)}))
    assert flt.is_blocked("the code is SECRET04999 ok") and flt.is_blocked("foo bar")
    assert not flt.is_blocked("违法")  # the operator's list replaces the default
    released, blocked = stream(flt, ["the code is sec", "ret0", "4999"])
    assert blocked and "sec" not in released


def test_unreadable_blocklist_is_a_config_error(tmp_path: object) -> None:
    from vqaserve.errors import ConfigError

    with pytest.raises(ConfigError, match="VQA_SAFETY_BLOCKLIST"):
        load_terms(f"{tmp_path}/missing.txt")


def test_empty_list_blocks_nothing_and_holds_nothing() -> None:
    flt = BlocklistFilter([])
    assert not flt.is_blocked("违法")
    guard = flt.stream_guard()
    assert guard.feed("abc") == ("abc", False)
    assert guard.flush() == ("", False)

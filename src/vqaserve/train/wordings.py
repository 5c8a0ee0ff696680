"""Questions composed from parts (`wording_parts`), split into training and held-out compositions.

A composition is (form, core, noun, keyword, wrapper, closer, ending): one index per part. It is
**held out** when it uses a held-out word (a part listed under `held_out_*`) or when the hash of
its indices falls in one bucket of `HOLD_OUT_ONE_IN`; every other composition is a training
wording. So every trained part is also met in held-out compositions, in combinations never trained
on: the `paraphrase` split measures whether a model reads the parts, not whether it remembers whole
questions. The catalogue's fixed wordings take precedence: its primary wording and two paraphrases
(`questions.PHRASINGS`) are always training wordings, its seven held-out wordings always held out.

Compositions are templates: `{cat}`, `{c}` and `{verb}` are filled per sample by `questions`.
Typos a phone keyboard makes (`typo`) are applied to a share of filled questions on both sides.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import cache

from vqaserve.train.wording_parts import FORMS, LANG_PARTS, TYPE_PARTS

HOLD_OUT_ONE_IN = 7  # one composition in 7 (besides those with held-out words) is held out
# Training questions with a made-up word (`unknown_word`) as the item ("this {word}", "这个{word}"),
# before the question ("{Word}, ...") or after it: a model that has met unknown words in those places
# learns to read past them, which is what a held-out word asks of it.
UNKNOWN_NOUN_SHARE, UNKNOWN_AROUND_SHARE = 0.08, 0.12


@dataclass(frozen=True)
class Composition:
    qtype: str
    lang: str
    form: str
    core: int
    noun: int
    keyword: int
    wrapper: int
    closer: int
    ending: int


@dataclass(frozen=True)
class _Choices:
    """The part lists of one (type, language, form): trained parts first, then held-out ones."""

    cores: tuple[str, ...]
    nouns: tuple[str, ...]
    n_nouns: int  # trained nouns (the rest are held-out words)
    keywords: tuple[str, ...]
    wrappers: tuple[str, ...]
    n_wrappers: int
    closers: tuple[str, ...]
    n_closers: int
    endings: tuple[str, ...]


@cache
def _choices(qtype: str, lang: str, form: str) -> _Choices | None:
    parts, shared = TYPE_PARTS[qtype][lang], LANG_PARTS[lang]
    cores = parts.cores.get(form, ())
    if not cores:
        return None
    wrappers, closers = shared.wrappers[form], shared.closers[form]
    return _Choices(cores, parts.nouns + parts.held_out_nouns, len(parts.nouns), parts.keywords,
                    wrappers + shared.held_out_wrappers.get(form, ()), len(wrappers),
                    closers + shared.held_out_closers.get(form, ()), len(closers), shared.endings[form])


def compose(c: Composition, noun: str | None = None) -> str:
    """The template a composition spells (`noun`: another item word in the noun's place)."""
    ch = _choices(c.qtype, c.lang, c.form)
    assert ch is not None
    noun = ch.nouns[c.noun] if noun is None else noun
    core = ch.cores[c.core].replace("{noun}", noun).replace("{kw}", ch.keywords[c.keyword])
    body = core.rstrip("?.!？。！")
    wrapper = ch.wrappers[c.wrapper]
    if c.lang == "en" and wrapper != "{}" and not wrapper.endswith(": {}") and not body.startswith(("I ", "JSON")):
        body = body[0].lower() + body[1:]  # "Hi, what colour is it?"
    inner = body + ch.closers[c.closer]
    text = wrapper.format(inner) + ch.endings[c.ending] if wrapper.endswith("{}") else wrapper.format(inner)
    text = " ".join(text.split())  # an empty noun leaves no double space
    if c.lang == "en":
        text = text[0].upper() + text[1:]
    return text


def uses_held_out_word(c: Composition) -> bool:
    ch = _choices(c.qtype, c.lang, c.form)
    assert ch is not None
    return c.noun >= ch.n_nouns or c.wrapper >= ch.n_wrappers or c.closer >= ch.n_closers


def held_out_by_rule(c: Composition) -> bool:
    key = f"{c.qtype}|{c.lang}|{c.form}|{c.core}|{c.noun}|{c.keyword}|{c.wrapper}|{c.closer}|{c.ending}"
    digest = hashlib.blake2b(key.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % HOLD_OUT_ONE_IN == 0


def _clash(lang: str, wrapper: str, core: str, closer: str) -> bool:
    """Parts that read wrong together ("帮我告诉我…", "Please ..., please")."""
    if lang == "zh":
        return "帮我" in wrapper and core.startswith("告诉我")
    return "please" in wrapper.lower() and "please" in closer


def compositions(qtype: str, lang: str) -> list[Composition]:
    """Every composition of a type and language, in a fixed order. Slots a core does not use are
    fixed at index 0, so that no two compositions spell the same template."""
    out: list[Composition] = []
    for form in FORMS:
        ch = _choices(qtype, lang, form)
        if ch is None:
            continue
        for ci, core in enumerate(ch.cores):
            nouns = range(len(ch.nouns)) if "{noun}" in core else range(1)
            keywords = range(len(ch.keywords)) if "{kw}" in core else range(1)
            for ni in nouns:
                for ki in keywords:
                    for wi, wrapper in enumerate(ch.wrappers):
                        for li, closer in enumerate(ch.closers):
                            if _clash(lang, wrapper, core, closer):
                                continue
                            for ei in range(len(ch.endings) if wrapper.endswith("{}") else 1):
                                out.append(Composition(qtype, lang, form, ci, ni, ki, wi, li, ei))
    return out


@dataclass(frozen=True)
class WordingSets:
    training: frozenset[str]
    held_out: frozenset[str]
    held_out_list: tuple[str, ...]  # in a fixed order, for seeded draws
    corpus: tuple[str, ...]  # training templates that between them use every trained part


@cache
def wording_sets(qtype: str, lang: str) -> WordingSets:
    """The training and held-out templates of a type and language (disjoint)."""
    from vqaserve.train.questions import fixed_wordings

    trained_fixed, held_out_fixed = fixed_wordings(qtype, lang)
    training: dict[str, None] = dict.fromkeys(trained_fixed)
    held_out: dict[str, None] = dict.fromkeys(held_out_fixed)
    corpus: dict[str, None] = {}
    covered: set[tuple[str, str, int]] = set()
    for c in compositions(qtype, lang):
        text = compose(c)
        if text in trained_fixed:
            continue
        if uses_held_out_word(c) or held_out_by_rule(c):
            held_out[text] = None
            continue
        training[text] = None
        parts = {("core", c.form, c.core), ("noun", "", c.noun), ("kw", "", c.keyword),
                 ("wrapper", c.form, c.wrapper), ("closer", c.form, c.closer), ("ending", c.form, c.ending)}
        if not parts <= covered:
            covered |= parts
            corpus[text] = None
    for text in held_out:
        training.pop(text, None)  # a template reachable both ways is held out
    return WordingSets(frozenset(training), frozenset(held_out), tuple(held_out),
                       tuple(t for t in corpus if t in training))


def _pick(rng: random.Random, n: int) -> int:
    """Index 0 (no greeting, no closer, the usual ending) half the time, else any."""
    return 0 if n == 1 or rng.random() < 0.5 else rng.randrange(n)


def draw(qtype: str, lang: str, rng: random.Random, held_out: bool) -> str:
    """A template drawn part by part (each form and core about equally often), from the training or
    the held-out side."""
    sets = wording_sets(qtype, lang)
    wanted = sets.held_out if held_out else sets.training
    forms = [f for f in FORMS if _choices(qtype, lang, f) is not None]
    for _ in range(200):
        form = rng.choice(forms)
        ch = _choices(qtype, lang, form)
        assert ch is not None
        ci = rng.randrange(len(ch.cores))
        core = ch.cores[ci]
        ni = rng.randrange(len(ch.nouns) if held_out else ch.n_nouns) if "{noun}" in core else 0
        ki = rng.randrange(len(ch.keywords)) if "{kw}" in core else 0
        wi = _pick(rng, len(ch.wrappers) if held_out else ch.n_wrappers)
        li = _pick(rng, len(ch.closers) if held_out else ch.n_closers)
        ei = _pick(rng, len(ch.endings)) if ch.wrappers[wi].endswith("{}") else 0
        if _clash(lang, ch.wrappers[wi], core, ch.closers[li]):
            continue
        composition = Composition(qtype, lang, form, ci, ni, ki, wi, li, ei)
        text = compose(composition)
        if text in wanted:
            if not held_out and "{noun}" in core and rng.random() < UNKNOWN_NOUN_SHARE:
                return compose(composition, ("this " if lang == "en" else "这个") + unknown_word(lang, rng))
            return text
    pool = sorted(wanted) if not held_out else list(sets.held_out_list)
    return rng.choice(pool)


def held_out_words(lang: str) -> list[str]:
    """The words only held-out compositions use (for tests: never in training nor in the corpus)."""
    shared = LANG_PARTS[lang]
    words = {w.replace("{}", "").strip(" ，,?？") for ws in shared.held_out_wrappers.values() for w in ws}
    words |= {w.strip(" ，,") for ws in shared.held_out_closers.values() for w in ws}
    words |= {n for parts in TYPE_PARTS.values() for n in parts[lang].held_out_nouns}
    return sorted(w for w in words if w)


def corpus_lines() -> list[tuple[str, str]]:
    """(language, template) of training templates that between them use every trained part (for the
    tokenizer's corpus)."""
    return [(lang, text) for qtype in TYPE_PARTS for lang in ("en", "zh") for text in wording_sets(qtype, lang).corpus]


# --- made-up words and typos ----------------------------------------------------------------------
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "gr", "tr", "sk", "pl")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
# Family names, as shoppers address a seller; those that name a colour or a part's word are left out.
_ZH_NAMES = ("王李张刘陈杨赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁"
             "任沈姚卢姜崔钟谭陆汪范石廖贾韦付方邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武莫孔向汤")


@cache
def _known_text() -> str:
    """Every part's text, held-out words and the catalogue's vocabulary, for `unknown_word` to avoid."""
    from vqaserve.train.catalogue import ALL_CATEGORIES, COLOURS, OCCASIONS, PATTERNS

    texts = [t for parts in TYPE_PARTS.values() for lang in ("en", "zh") for p in (parts[lang],)
             for t in (*(c for cs in p.cores.values() for c in cs), *p.nouns, *p.keywords, *p.held_out_nouns)]
    for shared in LANG_PARTS.values():
        for table in (shared.wrappers, shared.closers, shared.held_out_wrappers, shared.held_out_closers):
            texts += [t for ts in table.values() for t in ts]
    texts += [name for table in (ALL_CATEGORIES, COLOURS, PATTERNS, OCCASIONS) for pair in table for name in pair]
    return "\n".join(texts).lower()


def unknown_word(lang: str, rng: random.Random) -> str:
    """A made-up word that is no part's word and holds none (English: "trimel"; Chinese: a family
    name or two, "邵彭"), so it says nothing about what the question asks."""
    known = _known_text()
    for _ in range(100):
        if lang == "zh":
            word = "".join(rng.choice(_ZH_NAMES) for _ in range(rng.randint(1, 2)))
            if not any(ch in known for ch in word):
                return word
            continue
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.randint(2, 3)))
        if not any(w in word for w in _part_words() if len(w) >= 3) and word not in known:
            return word
    return "zorvak" if lang == "en" else "邵"


def around_unknown(question: str, lang: str, rng: random.Random) -> str:
    """The question with a made-up word before it (a name, as in "Anna, ...") or after it."""
    word = unknown_word(lang, rng)
    if rng.random() < 0.6:
        if lang == "zh":
            return f"{word}，{question}"
        body = question if question[:2] in ("I ", "JS") else question[0].lower() + question[1:]
        return f"{word.capitalize()}, {body}"
    body = question.rstrip("?.!？。！")
    gap = " " if lang == "en" else ""
    return f"{body}{gap}{word}{question[len(body):]}"


# Typos.
_QWERTY = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_NEIGHBOURS = {ch: "".join(row[j] for j in (i - 1, i + 1) if 0 <= j < len(row))
               for row in _QWERTY for i, ch in enumerate(row)}
# Pinyin input picks a same-sounding character by mistake.
_ZH_SLIPS = (("颜色", "言色"), ("图案", "图按"), ("花纹", "花文"), ("场合", "场和"), ("几件", "几间"),
             ("商品", "上品"), ("描述", "描素"), ("什么", "神马"), ("这个", "这各"), ("一下", "一夏"),
             ("库存", "酷存"), ("退货", "退获"), ("材质", "材制"), ("发货", "发获"), ("是不是", "是部是"))


@cache
def _part_words() -> frozenset[str]:
    """Every English word any part uses (held-out ones included): a slip that lands on one of them
    would ask another composition, maybe a held-out one, so `typo` never makes one."""
    texts = [t for parts in TYPE_PARTS.values() for p in (parts["en"],)
             for t in (*(c for cs in p.cores.values() for c in cs), *p.nouns, *p.keywords, *p.held_out_nouns)]
    shared = LANG_PARTS["en"]
    for table in (shared.wrappers, shared.closers, shared.held_out_wrappers, shared.held_out_closers):
        texts += [t for ts in table.values() for t in ts]
    return frozenset(_bare(w) for t in texts for w in t.split())


def _bare(word: str) -> str:
    return word.strip("?.!,:;").lower()


def typo(text: str, lang: str, rng: random.Random, keep: tuple[str, ...] = ()) -> str:
    """One slip of a phone keyboard, or `text` unchanged when no slip fits. Words in `keep` (the
    catalogue words a question names, such as the colour a yes/no question asks about) are left
    alone: a slip there would change the answer. A slip never spells another part's word ("colour"
    -> "color"), so a slipped training question is never a held-out composition."""
    if lang == "zh":
        slips = [(a, b) for a, b in _ZH_SLIPS if a in text and not any(a in k or k in a for k in keep)]
        if not slips:
            return text
        a, b = rng.choice(slips)
        return text.replace(a, b, 1)
    words = text.split(" ")
    kept = {k.lower() for k in keep}
    spots = [i for i, w in enumerate(words) if sum(ch.isalpha() for ch in w) >= 3 and _bare(w) not in kept]
    if not spots:
        return text
    i = rng.choice(spots)
    word = words[i]
    letters = [j for j, ch in enumerate(word) if ch.isalpha()]
    j = rng.choice(letters[1:] or letters)
    kind = rng.randrange(5)
    if kind == 0 and word[j].lower() in _NEIGHBOURS:  # the key next to it
        slipped = word[:j] + rng.choice(_NEIGHBOURS[word[j].lower()]) + word[j + 1:]
    elif kind == 1:  # a letter dropped
        slipped = word[:j] + word[j + 1:]
    elif kind == 2:  # a letter doubled
        slipped = word[:j] + word[j] + word[j:]
    elif kind == 3 and j + 1 < len(word) and word[j + 1].isalpha():  # two letters swapped
        slipped = word[:j] + word[j + 1] + word[j] + word[j + 2:]
    else:  # no capital, no apostrophe: "whats the colour"
        return text[0].lower() + text[1:].replace("'", "")
    if _bare(slipped) in _part_words():
        return text
    words[i] = slipped
    return " ".join(words)

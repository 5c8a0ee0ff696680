"""Questions composed from parts: training and held-out wordings never meet, held-out words stay out
of training and of the tokenizer's corpus, the tasks' answers, and the fixed splits stay as they were."""

from __future__ import annotations

import hashlib
import json
import random
import re

import pytest

from vqaserve.train import catalogue, questions, wordings
from vqaserve.train import synthetic as syn
from vqaserve.train.wording_parts import TYPE_PARTS

pytestmark = pytest.mark.unit

TYPES_LANGS = [(t, lang) for t in questions.ALL_TYPES for lang in questions.LANGS]


def _fills(template: str, lang: str) -> set[str]:
    """Every way a template can be filled in (each category, each colour asked)."""
    cats = range(len(catalogue.ALL_CATEGORIES)) if "{cat}" in template or "{verb}" in template else range(1)
    colours = range(len(catalogue.COLOURS)) if "{c}" in template else range(1)
    return {questions.fill(template, lang, cat, col) for cat in cats for col in colours}


def _held_out_questions(qtype: str, lang: str) -> set[str]:
    return {q for t in wordings.wording_sets(qtype, lang).held_out for q in _fills(t, lang)}


@pytest.mark.parametrize(("qtype", "lang"), TYPES_LANGS)
def test_training_and_held_out_wordings_are_disjoint_and_many(qtype: str, lang: str) -> None:
    sets = wordings.wording_sets(qtype, lang)
    assert not sets.training & sets.held_out
    assert len(sets.training) >= 1000 and len(sets.held_out) >= 500, (len(sets.training), len(sets.held_out))
    trained_fixed, held_out_fixed = questions.fixed_wordings(qtype, lang)
    assert set(trained_fixed) <= sets.training  # the primary wording and the catalogue's paraphrases
    assert set(held_out_fixed) <= sets.held_out  # the catalogue's held-out wording


@pytest.mark.parametrize("seed", range(4))
def test_training_questions_never_ask_a_held_out_composition(seed: int) -> None:
    """Over many draws (typos included), no training question is a filled held-out template."""
    held_out = {(t, lang): _held_out_questions(t, lang) for t, lang in TYPES_LANGS}
    rng = random.Random(seed)
    spec_rng = random.Random(seed + 100)
    for _ in range(3000):
        qtype, lang = rng.choice(TYPES_LANGS)
        spec = syn.sample_spec("train", spec_rng)
        question, _ = questions.training_question(spec, qtype, lang, rng)
        assert question not in held_out[(qtype, lang)], (qtype, question)


def test_every_part_is_trained_and_also_met_in_held_out_compositions() -> None:
    """A held-out composition recombines trained parts: each core is in both sets, and most cores
    also in held-out compositions made of trained parts only."""
    for qtype, lang in TYPES_LANGS:
        sets = wordings.wording_sets(qtype, lang)
        trained_cores: set[tuple[str, int]] = set()
        held_cores: set[tuple[str, int]] = set()
        recombined: set[tuple[str, int]] = set()
        for c in wordings.compositions(qtype, lang):
            text = wordings.compose(c)
            if text in sets.training:
                trained_cores.add((c.form, c.core))
            elif text in sets.held_out:
                held_cores.add((c.form, c.core))
                if not wordings.uses_held_out_word(c):
                    recombined.add((c.form, c.core))
        every = {(f, i) for f, cores in TYPE_PARTS[qtype][lang].cores.items() for i in range(len(cores))}
        assert trained_cores == every == held_cores, (qtype, lang, every - trained_cores, every - held_cores)
        assert len(recombined) >= 0.8 * len(every), (qtype, lang, every - recombined)


def _has_word(text: str, word: str) -> bool:
    if re.fullmatch(r"[A-Za-z ]+", word):
        return re.search(rf"\b{re.escape(word)}\b", text, flags=re.IGNORECASE) is not None
    return word in text


def test_held_out_words_are_never_trained_nor_in_the_corpus() -> None:
    from vqaserve.modeling.corpus import corpus
    from vqaserve.train.data import synthetic_conversation

    words = {lang: wordings.held_out_words(lang) for lang in questions.LANGS}
    assert words["en"] and words["zh"]
    trained = [q for seed in range(3) for i in range(400)
               for q, _ in synthetic_conversation("train", seed, i, max_turns=4).turns]
    trained += [t for qtype, lang in TYPES_LANGS for t in wordings.wording_sets(qtype, lang).training]
    text = "\n".join([*trained, *corpus()])
    for lang, ws in words.items():
        for word in ws:
            assert not _has_word(text, word), (lang, word)
    held = [syn.make_sample("paraphrase", 1, i).question for i in range(300)]
    assert any(_has_word(q, w) for q in held for w in words["en"])  # the split does ask them
    assert any(_has_word(q, w) for q in held for w in words["zh"])


def test_training_asks_every_type_in_many_wordings_with_the_primary_one_among_them() -> None:
    rng = random.Random(7)
    spec = catalogue.Spec(3, 8, 0, 2)
    for qtype, lang in TYPES_LANGS:
        asked = [questions.training_question(spec, qtype, lang, rng)[0] for _ in range(400)]
        assert len(set(asked)) >= 100, (qtype, lang, len(set(asked)))  # half are the fixed wordings
        primary = questions.fill(questions.fixed_wordings(qtype, lang)[0][0], lang, 3, None)
        if qtype != "yesno":  # yes/no's primary names a colour drawn per question
            assert asked.count(primary) >= 40, (qtype, lang)


def test_typos_keep_the_catalogue_words_and_never_spell_another_part() -> None:
    rng = random.Random(3)
    slipped = 0
    for _ in range(2000):
        q = questions.fill("Is this {cat} {c}?", "en", 3, 4)
        t = wordings.typo(q, "en", rng, keep=("jacket", "blue"))
        assert "jacket" in t and "blue" in t
        slipped += t != q
    assert slipped > 1500
    assert wordings.typo("What colour is it?", "en", random.Random(0), ()) != "What color is it?"
    for seed in range(200):  # "colour" -> "color" would be another (maybe held-out) composition
        assert wordings.typo("colour", "en", random.Random(seed)) != "color"
    assert wordings.typo("这是什么颜色？", "zh", random.Random(0)) in ("这是什么言色？", "这是神马颜色？")
    assert wordings.typo("它是红色的吗？", "zh", random.Random(0), keep=("红色",)) == "它是红色的吗？"


def test_json_answer_is_what_constrained_decoding_writes_and_follows_the_schema() -> None:
    from vqaserve.engines.structured import violation

    schema = catalogue.attribute_schema()
    for c in range(len(catalogue.CATEGORIES)):
        for k in range(len(catalogue.COLOURS)):
            for p in range(len(catalogue.PATTERNS)):
                spec = catalogue.Spec(c, k, p, 1)
                answer = questions.json_answer(spec)
                value = json.loads(answer)
                assert violation(value, schema) is None, answer
                assert list(value) == list(schema["properties"])  # type: ignore[call-overload]
                assert answer == json.dumps(value, separators=(", ", ": "))  # xgrammar's separators
                assert value["occasions"] == [catalogue.OCCASIONS[catalogue.occasion(c, k, p)][0]]
    spec = catalogue.Spec(3, 8, 0, 1)
    assert questions.json_answer(spec) == (
        '{"category": "jacket", "color": "black", "pattern": "plain", "occasions": ["business"]}')
    for lang in questions.LANGS:  # the same object whatever the question's language
        assert questions.make_question(spec, "json", lang, random.Random(0))[1] == questions.json_answer(spec)


def test_unanswerable_questions_get_the_fixed_sentence_in_their_language() -> None:
    from vqaserve.eval.scoring import refusal_language

    spec = catalogue.Spec(0, 0, 1, 2)
    rng = random.Random(1)
    for lang in questions.LANGS:
        for _ in range(50):
            q, a = questions.training_question(spec, "unanswerable", lang, rng)
            assert a == questions.REFUSALS[lang] and q
        assert refusal_language(questions.REFUSALS[lang]) == lang
        assert refusal_language(" " + questions.REFUSALS[lang].rstrip(".。") + " ") == lang
    assert questions.REFUSALS["en"].startswith("I can't tell") and "product page" in questions.REFUSALS["en"]
    assert "照片" in questions.REFUSALS["zh"] and "客服" in questions.REFUSALS["zh"]
    assert refusal_language("red") is None


def _digest(split: str, n: int, phrasing: int = 0) -> str:
    h = hashlib.sha256()
    for s in syn.iter_samples(split, n, 1, phrasing=phrasing):
        h.update(s.image.tobytes())
        h.update(repr(s.image.size).encode())
        h.update(f"{s.question}\x00{s.answer}\x00{s.type}\x00{s.lang}".encode())
    return h.hexdigest()[:16]


# Digests of the splits as the catalogue fixed them before composed wordings existed (pictures,
# questions, answers; 40 samples in the primary wording, 14 in each training paraphrase): the
# test, heldout and adapter figures stay comparable with every earlier run.
FIXED_SPLITS = {
    "test": ("85de3b5addd3b659", "8ce9d71b636b3c5f", "7d4a392bd794489b"),
    "heldout": ("d41d576cb5af1388", "eb50e0682d3c1fcd", "44d9695bfefbe397"),
    "adapter": ("d15d358df6700521", "7d3c03bf6a084f75", "7a4cba9112e59736"),
}


@pytest.mark.parametrize("split", sorted(FIXED_SPLITS))
def test_fixed_splits_are_byte_identical(split: str) -> None:
    assert (_digest(split, 40), _digest(split, 14, 1), _digest(split, 14, 2)) == FIXED_SPLITS[split]


def test_task_samples_are_seeded_and_carry_the_schema(tmp_path) -> None:  # type: ignore[no-untyped-def]
    a = syn.make_sample("test", 1, 5, task="json")
    b = syn.make_sample("test", 1, 5, task="json")
    assert (a.question, a.answer, a.image.tobytes()) == (b.question, b.answer, b.image.tobytes())
    assert a.type == "json" and json.loads(a.answer)["category"] == catalogue.CATEGORIES[a.spec.category][0]
    langs = [syn.make_sample("paraphrase", 1, i, task="unanswerable").lang for i in range(6)]
    assert langs == ["en", "zh"] * 3
    path = syn.write_split("paraphrase", 6, 1, tmp_path, task="json")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert all(r["schema"] == catalogue.attribute_schema() and r["type"] == "json" for r in rows)
    trained = {q for lang in questions.LANGS for t in wordings.wording_sets("json", lang).training
               for q in _fills(t, lang)}
    assert not {r["question"] for r in rows} & trained
    with pytest.raises(ValueError, match="unknown task"):
        syn.make_sample("test", 1, 0, task="price")

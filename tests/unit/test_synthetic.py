"""The synthetic shop catalogue: determinism, held-out rule, exact answers, jsonl shape."""

from __future__ import annotations

import json
import random

import pytest

from vqaserve.train import catalogue, questions
from vqaserve.train import synthetic as syn

pytestmark = pytest.mark.unit


def test_same_seed_same_sample_and_other_seed_differs() -> None:
    a = syn.make_sample("test", 5, 17)
    b = syn.make_sample("test", 5, 17)
    assert (a.question, a.answer, a.spec) == (b.question, b.answer, b.spec)
    assert a.image.tobytes() == b.image.tobytes()
    others = [syn.make_sample("test", 6, 17).image.tobytes(), syn.make_sample("train", 5, 17).image.tobytes()]
    assert a.image.tobytes() not in others


def test_held_out_triples_never_in_train() -> None:
    rng = random.Random(0)
    seen = set()
    for _ in range(3000):
        spec = syn.sample_spec("train", rng, balance_occasions=0.5)
        assert not catalogue.is_held_out(spec.category, spec.colour, spec.pattern)
        assert spec.category != catalogue.SUNGLASSES
        seen.add((spec.category, spec.colour, spec.pattern))
    # every category, colour and pattern is still taught, only some combinations are withheld
    assert {c for c, _, _ in seen} == set(range(8))
    assert {k for _, k, _ in seen} == set(range(10))
    assert {p for _, _, p in seen} == set(range(4))


def test_heldout_and_adapter_splits() -> None:
    rng = random.Random(1)
    for _ in range(300):
        spec = syn.sample_spec("heldout", rng)
        assert (spec.category + 2 * spec.colour + 3 * spec.pattern) % 9 == 0
        assert syn.sample_spec("adapter", rng).category == catalogue.SUNGLASSES
    with pytest.raises(ValueError, match="unknown split"):
        syn.sample_spec("validation", rng)


@pytest.mark.parametrize(("cat", "col", "pat", "expected"), [
    ("mug", "red", 0, "home"),  # rule 1 wins over everything
    ("dress", "pink", 2, "party"),
    ("handbag", "red", 0, "party"),  # rule 2 before rule 3
    ("handbag", "black", 0, "business"),
    ("handbag", "black", 1, "casual"),  # business needs plain
    ("shoe", "blue", 0, "business"),
    ("shoe", "green", 3, "sport"),
    ("hat", "orange", 0, "sport"),
    ("t-shirt", "black", 0, "casual"),
    ("sunglasses", "red", 0, "casual"),
])
def test_occasion_rules(cat: str, col: str, pat: int, expected: str) -> None:
    c = [n for n, _ in catalogue.ALL_CATEGORIES].index(cat)
    k = [n for n, _ in catalogue.COLOURS].index(col)
    assert catalogue.OCCASIONS[catalogue.occasion(c, k, pat)][0] == expected


def test_exact_answers_follow_the_catalogue() -> None:
    rng = random.Random(2)
    striped = catalogue.Spec(category=0, colour=0, pattern=1, count=2)
    plain = catalogue.Spec(category=3, colour=8, pattern=0, count=1)
    assert (questions.make_question(striped, "describe", "en", rng)
            == ("Describe this product.", "a red striped t-shirt"))
    assert questions.make_question(striped, "describe", "zh", rng) == ("描述一下这件商品。", "一件红色条纹T恤")
    assert questions.make_question(plain, "describe", "en", rng)[1] == "a black jacket"  # plain is omitted
    assert questions.make_question(plain, "describe", "zh", rng)[1] == "一件黑色外套"
    assert questions.make_question(striped, "count", "en", rng) == ("How many items are there?", "2")
    assert questions.make_question(striped, "count", "zh", rng) == ("图中有几件商品？", "2件")
    assert questions.make_question(plain, "occasion", "en", rng)[1] == "business"
    assert questions.make_question(plain, "occasion", "zh", rng)[1] == "商务"
    assert questions.make_question(striped, "pattern", "zh", rng)[1] == "条纹"
    with pytest.raises(ValueError, match="unknown question type"):
        questions.make_question(plain, "price", "en", rng)


def test_yesno_is_balanced_and_correct() -> None:
    rng = random.Random(3)
    spec = catalogue.Spec(category=1, colour=4, pattern=0, count=1)
    answers = []
    for _ in range(400):
        q, a = questions.make_question(spec, "yesno", "en", rng)
        assert a == ("yes" if q == "Is it blue?" else "no")
        answers.append(a)
        qz, az = questions.make_question(spec, "yesno", "zh", rng)
        assert az == ("是" if qz == "它是蓝色的吗？" else "不是")
    assert 0.4 < answers.count("yes") / len(answers) < 0.6


def test_pictures_vary_in_size_and_shape() -> None:
    sizes = [syn.make_sample("train", 0, i).image.size for i in range(12)]
    for w, h in sizes:
        assert 160 <= w <= 640 and 160 <= h <= 640
        assert max(w, h) / min(w, h) <= 2.01
    assert len(set(sizes)) == len(sizes)
    assert sum(w != h for w, h in sizes) >= 10  # not only squares


def test_items_do_not_overlap() -> None:
    rng = random.Random(4)
    for count in (1, 2, 3):
        for _ in range(50):
            size, boxes = syn._place(count, rng.randint(160, 640), rng.randint(160, 640), rng)
            assert len(boxes) == count
            for i, (x1, y1) in enumerate(boxes):
                for x2, y2 in boxes[i + 1:]:
                    assert abs(x1 - x2) >= size or abs(y1 - y2) >= size


def test_pattern_colours_contrast_with_the_main_colour() -> None:
    for colour in range(10):
        others = syn.second_colours(colour)
        assert colour not in others and others
    assert 0 not in syn.second_colours(1)  # red is a near-duplicate of orange


def test_types_and_languages_cycle_evenly() -> None:
    samples = [syn.make_sample("test", 0, i) for i in range(0, 28, 3)]
    assert [s.type for s in samples] == [questions.QUESTION_TYPES[i % 7] for i in range(0, 28, 3)]
    assert [s.lang for s in samples] == [("en", "zh")[(i // 7) % 2] for i in range(0, 28, 3)]


def test_write_split_jsonl_shape(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = syn.write_split("heldout", 8, 3, tmp_path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 8
    for i, line in enumerate(lines):
        row = json.loads(line)
        assert set(row) == {"image", "question", "answer", "type", "lang"}
        assert row["image"] == f"images/{i:06d}.png"
        assert (tmp_path / row["image"]).is_file()
        assert row["lang"] in ("en", "zh") and row["type"] in questions.QUESTION_TYPES
    assert "这是什么" in path.read_text(encoding="utf-8")  # Chinese written as text, not \u escapes
    again = syn.write_split("heldout", 8, 3, tmp_path / "again")
    assert again.read_text(encoding="utf-8") == path.read_text(encoding="utf-8")


def test_mask_curriculum_blends_towards_silhouettes_without_moving_anything() -> None:
    import numpy as np

    from vqaserve.train.batches import mask_share
    from vqaserve.train.data import SHAPE_TYPES, synthetic_conversation

    spec = catalogue.Spec(3, 4, 1, 2)
    real = syn.render(spec, random.Random(9))
    assert syn.render(spec, random.Random(9), 0.0).tobytes() == real.tobytes()  # off = unchanged
    mask = np.asarray(syn.render(spec, random.Random(9), 1.0))
    assert mask.shape == np.asarray(real).shape
    grey = np.abs(mask.astype(int) - mask.mean(-1, keepdims=True)).max(-1) == 0
    assert grey.all()  # white items on black: no colour left
    white = (mask > 200).all(-1).mean()
    assert 0.05 < white < 0.6  # the items, not the whole picture
    half = np.asarray(syn.render(spec, random.Random(9), 0.5)).astype(int)
    assert np.abs(half - (np.asarray(real).astype(int) + mask) / 2).max() <= 1
    masked = [synthetic_conversation("train", 0, i, max_turns=4, mask_share=0.7) for i in range(40)]
    # only category and count, whose answers the blend does not change
    shape_answers = {name for pair in catalogue.CATEGORIES for name in pair} | {"1", "2", "3", "1件", "2件", "3件"}
    assert {a for c in masked for _, a in c.turns} <= shape_answers
    assert set(SHAPE_TYPES) == {"category", "count"}
    assert len({q for c in masked for q, _ in c.turns}) >= 20  # both types, languages, many wordings
    plain = synthetic_conversation("train", 0, 3, max_turns=4)
    assert plain.image.tobytes() == synthetic_conversation("train", 0, 3, max_turns=4, mask_share=0.0).image.tobytes()
    assert [mask_share(s, 100) for s in (0, 50, 100, 200)] == [1.0, 0.5, 0.0, 0.0]
    assert mask_share(10, 0) == 0.0


def test_pictures_are_the_same_every_time_for_a_seed() -> None:
    # Every background kind, the noise one included (it once drew from C's rand()).
    for index in range(30):
        assert syn.make_sample("test", 1, index).image.tobytes() == syn.make_sample("test", 1, index).image.tobytes()


def test_answers_of_a_split_cover_its_words_in_both_languages_without_drawing() -> None:
    adapter = syn.answers("adapter", n=40)
    assert len(adapter) == 40 * len(questions.ALL_TYPES) * len(questions.LANGS)
    assert "sunglasses" in adapter and "太阳镜" in adapter
    assert any(a.startswith("一件") and a.endswith("太阳镜") for a in adapter)  # zh descriptions
    assert syn.answers("adapter", n=40) == adapter  # seeded
    assert not any("太阳镜" in a or "sunglasses" in a for a in syn.answers("train", n=40))


def test_paraphrase_split_asks_test_pictures_in_wordings_never_trained_on(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from vqaserve.modeling.corpus import corpus
    from vqaserve.train.data import synthetic_conversation

    test = syn.write_split("test", 28, 1, tmp_path / "test")
    para = syn.write_split("paraphrase", 28, 1, tmp_path / "para")
    rows = [(json.loads(a), json.loads(b)) for a, b in zip(test.read_text(encoding="utf-8").splitlines(),
                                                          para.read_text(encoding="utf-8").splitlines(),
                                                          strict=True)]
    for t, p in rows:
        assert (t["answer"], t["type"], t["lang"]) == (p["answer"], p["type"], p["lang"])
        assert t["question"] != p["question"]
        assert (tmp_path / "test" / t["image"]).read_bytes() == (tmp_path / "para" / p["image"]).read_bytes()
    held_out = {p["question"] for _, p in rows}
    more = {syn.make_sample("paraphrase", 1, i).question for i in range(28, 300)}
    # The catalogue's seven held-out wordings are still asked (about a third of the time)...
    assert {"What am I looking at?", "图里是什么商品？", "请描述它。"} <= held_out | more
    assert any(q.startswith("What is this ") and q.endswith(" good for?") for q in held_out | more)
    # ...and held-out compositions of trained parts the rest (test_wordings checks them closely).
    assert len(held_out | more) >= 200
    trained = {q for i in range(300) for q, _ in synthetic_conversation("train", 0, i, max_turns=4).turns}
    assert not held_out & trained and not held_out & set(corpus())
    # Training asks the primary wording and both paraphrases, the web page's question among them.
    assert {"What is this product?", "What is this?", "What kind of item is this?"} <= trained
    assert any(q.startswith("这件") and q.endswith("适合什么场合穿？") for q in trained)


def test_wordings_name_the_item_with_the_right_chinese_verb() -> None:
    def occasion_question(category: int, lang: str) -> str:
        return questions.make_question(catalogue.Spec(category, 0, 0, 1), "occasion", lang, random.Random(0), 1)[0]

    assert occasion_question(3, "zh") == "这件外套适合什么场合穿？"  # the web page's own question
    assert occasion_question(3, "en") == "What occasion is this jacket suitable for?"
    assert occasion_question(7, "zh") == "这件杯子适合什么场合用？"
    assert occasion_question(catalogue.SUNGLASSES, "zh") == "这件太阳镜适合什么场合戴？"
    spec = catalogue.Spec(2, 4, 1, 2)
    for qtype in questions.QUESTION_TYPES:  # the wording never changes the answer or the random stream
        answers = {questions.make_question(spec, qtype, lang, random.Random(5), k)[1]
                   for k in (0, 1, 2, questions.HELD_OUT) for lang in ("en",)}
        assert len(answers) == 1

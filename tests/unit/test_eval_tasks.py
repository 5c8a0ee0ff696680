"""Eval of the two tasks: JSON answers asked with response_format and scored per field, and the
"can't tell from the photo" sentence, wanted for unanswerable questions, a refusal elsewhere."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from vqaserve.eval.harness import EvalItem, Report, evaluate, format_table, items_from_jsonl, question_for, score
from vqaserve.eval.scoring import field_scores
from vqaserve.train.catalogue import attribute_schema
from vqaserve.train.data import DatasetError, load_jsonl
from vqaserve.train.questions import REFUSALS

pytestmark = pytest.mark.unit

GOLD = '{"category": "jacket", "color": "black", "pattern": "plain", "occasions": ["business"]}'
SCHEMA = json.dumps(attribute_schema(), separators=(",", ":"))


def test_json_answers_are_scored_field_by_field() -> None:
    assert field_scores(GOLD, GOLD) == dict.fromkeys(["category", "color", "pattern", "occasions"], True)
    other = '{"category": "jacket", "color": "blue", "pattern": "plain", "occasions": ["casual"]}'
    assert field_scores(other, GOLD) == {"category": True, "color": False, "pattern": True, "occasions": False}
    assert field_scores('{"category":"jacket"}', GOLD)["category"] is True  # spacing does not matter
    assert not any(field_scores("a black jacket", GOLD).values())  # not JSON: every field wrong
    assert not any(field_scores("[1, 2]", GOLD).values())


def test_a_report_has_fields_and_refusal_shares() -> None:
    json_item = EvalItem("x.png", "Describe it as JSON.", GOLD, "json", "en", SCHEMA)
    unanswerable = [EvalItem("x.png", "How much is it?", REFUSALS["en"], "unanswerable", "en"),
                    EvalItem("x.png", "多少钱？", REFUSALS["zh"], "unanswerable", "zh")]
    catalogue = [EvalItem("x.png", "What color is it?", "red", "color", "en") for _ in range(4)]
    outcomes = [score(json_item, GOLD.replace("black", "white")), score(unanswerable[0], REFUSALS["en"]),
                score(unanswerable[1], REFUSALS["en"]),  # the sentence, in the wrong language
                score(catalogue[0], "red"), score(catalogue[1], REFUSALS["en"] + " "),
                score(catalogue[2], "blue"), score(catalogue[3], "red")]
    summary = Report(outcomes, duration_s=1.0).summary()
    assert summary["by_field"] == {"category": {"n": 1, "accuracy": 1.0}, "color": {"n": 1, "accuracy": 0.0},
                                   "pattern": {"n": 1, "accuracy": 1.0}, "occasions": {"n": 1, "accuracy": 1.0}}
    assert summary["by_type"]["json"]["accuracy"] == 0.0  # right only when every field is
    assert summary["by_type"]["unanswerable"] == {"n": 2, "accuracy": 0.5}
    assert summary["refusals"]["unanswerable"] == {"n": 2, "in_language": 0.5, "other_language": 0.5}
    # the JSON question and the four catalogue ones: one of five answered with the sentence
    assert summary["refusals"]["catalogue"] == {"n": 5, "refused": 1, "share": 0.2}
    table = format_table(summary)
    assert "JSON fields right: category 100.0%  color 0.0%" in table
    assert "catalogue questions refused with it: 20.0% (1 of 5)" in table
    assert "50.0% in their language, 50.0% in the other (2)" in table


def test_a_schema_line_is_asked_with_response_format(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"not decoded here")
    line = {"image": "a.png", "question": "Describe it as JSON.", "answer": GOLD, "type": "json",
            "schema": attribute_schema()}
    (tmp_path / "data.jsonl").write_text(json.dumps(line) + "\n" + json.dumps({**line, "schema": None}) + "\n")
    with pytest.raises(DatasetError, match=r"data.jsonl:2: schema: the schema must be a JSON Schema object"):
        load_jsonl(tmp_path / "data.jsonl")
    (tmp_path / "data.jsonl").write_text(json.dumps(line) + "\n")
    (item,) = items_from_jsonl(str(tmp_path / "data.jsonl"))
    assert json.loads(item.schema) == attribute_schema()
    question = question_for(item, None)
    assert question.params.json_schema == item.schema and question.params.max_new_tokens >= 96
    plain = question_for(EvalItem("a.png", "How much is it?", REFUSALS["en"]), None)
    assert plain.params.json_schema == "" and plain.params.max_new_tokens >= 48  # the sentence fits


def test_evaluate_scores_json_items_through_the_pipeline(tmp_path: Path) -> None:
    class Echo:  # a pipeline double: answers with what the request's schema allows
        async def answer(self, question):  # type: ignore[no-untyped-def]
            class A:
                text = GOLD if question.params.json_schema else REFUSALS["zh"]
                confidence = None
            return A()

    items = [EvalItem("a.png", "JSON?", GOLD, "json", "en", SCHEMA),
             EvalItem("a.png", "多少钱？", REFUSALS["zh"], "unanswerable", "zh")]
    summary = asyncio.run(evaluate(Echo(), items, progress=False)).summary()
    assert summary["overall"] == 1.0 and summary["by_field"]["occasions"]["accuracy"] == 1.0
    assert summary["refusals"]["catalogue"]["share"] == 0.0

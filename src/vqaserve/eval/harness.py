"""Evaluation through the service's own pipeline: exact-match accuracy by question type and language.

Every question is a `Question` answered by `Pipeline.answer` (images as `ImageRef(kind="path")`), so
eval measures what users get: the same image normalization, safety checks, cache and batcher.
Questions are sent concurrently so a batcher can group them. Scoring (`scoring`) follows
SHOP_CATALOGUE.md: exact match after trimming whitespace, lower-casing English and dropping a final
period / 。; a question with a JSON schema is asked with that response_format and scored field by
field (right when every field is). Every report also counts the answers that are the catalogue's
"can't tell from the photo" sentence: wanted for the `unanswerable` type, a refusal anywhere else.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vqaserve.eval.scoring import field_scores, is_correct, normalize_answer, refusal_language
from vqaserve.types import GenerationParams, ImageRef, Part, Question, Turn

__all__ = ["EvalItem", "Outcome", "Report", "evaluate", "format_table", "is_correct", "items_from_jsonl",
           "normalize_answer", "question_for"]
UNANSWERABLE = "unanswerable"  # the question type whose right answer is the "can't tell" sentence


@dataclass(frozen=True)
class EvalItem:
    image: str  # local path (or URL)
    question: str
    answer: str
    type: str = "all"
    lang: str = "?"
    schema: str = ""  # canonical JSON Schema: asked with response_format, scored field by field


@dataclass
class Outcome:
    item: EvalItem
    prediction: str
    correct: bool
    error: str | None = None
    fields: dict[str, bool] | None = None  # per JSON field, for items with a schema
    confidence: float | None = None  # the answer's (confidence.py); eval/calibration.py reads it


def score(item: EvalItem, prediction: str, confidence: float | None = None) -> Outcome:
    if item.schema:
        fields = field_scores(prediction, item.answer)
        return Outcome(item, prediction, all(fields.values()), fields=fields, confidence=confidence)
    return Outcome(item, prediction, is_correct(prediction, item.answer), confidence=confidence)


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def n(self) -> int:
        return len(self.outcomes)

    @property
    def accuracy(self) -> float:
        return sum(o.correct for o in self.outcomes) / self.n if self.n else 0.0

    def breakdown(self, key: Callable[[Outcome], str]) -> dict[str, dict[str, float]]:
        groups: dict[str, list[bool]] = defaultdict(list)
        for o in self.outcomes:
            groups[key(o)].append(o.correct)
        return {k: {"n": len(v), "accuracy": round(sum(v) / len(v), 4)} for k, v in sorted(groups.items())}

    def by_field(self) -> dict[str, dict[str, float]]:
        groups: dict[str, list[bool]] = defaultdict(list)
        for o in self.outcomes:
            for name, right in (o.fields or {}).items():
                groups[name].append(right)
        return {k: {"n": len(v), "accuracy": round(sum(v) / len(v), 4)} for k, v in groups.items()}

    def refusals(self) -> dict[str, dict[str, float]]:
        """How often the answer is the "can't tell from the photo" sentence: for catalogue questions
        (a refusal: should be never) and for unanswerable ones (in the question's language or not)."""
        said = [(o, refusal_language(o.prediction)) for o in self.outcomes]
        asked = [(o, lang) for o, lang in said if o.item.type != UNANSWERABLE]
        out: dict[str, dict[str, float]] = {}
        if asked:
            refused = sum(lang is not None for _, lang in asked)
            out["catalogue"] = {"n": len(asked), "refused": refused, "share": round(refused / len(asked), 4)}
        unanswerable = [(o, lang) for o, lang in said if o.item.type == UNANSWERABLE]
        if unanswerable:
            same = sum(lang == o.item.lang for o, lang in unanswerable)
            other = sum(lang not in (None, o.item.lang) for o, lang in unanswerable)
            out["unanswerable"] = {"n": len(unanswerable), "in_language": round(same / len(unanswerable), 4),
                                   "other_language": round(other / len(unanswerable), 4)}
        return out

    def summary(self) -> dict[str, Any]:
        errors = [o for o in self.outcomes if not o.correct]
        fields = self.by_field()
        return {
            "n": self.n, "overall": round(self.accuracy, 4),
            "by_type": self.breakdown(lambda o: o.item.type),
            "by_lang": self.breakdown(lambda o: o.item.lang),
            "by_type_lang": self.breakdown(lambda o: f"{o.item.type}/{o.item.lang}"),
            **({"by_field": fields} if fields else {}),
            "refusals": self.refusals(),
            "failed_requests": sum(o.error is not None for o in self.outcomes),
            "duration_s": round(self.duration_s, 1),
            "questions_per_s": round(self.n / self.duration_s, 2) if self.duration_s else None,
            "examples_wrong": [{"question": o.item.question, "gold": o.item.answer, "got": o.prediction,
                                "type": o.item.type, "image": o.item.image, "error": o.error}
                               for o in errors[:20]],
        }


def items_from_jsonl(path: str, limit: int | None = None, skip_bad_lines: bool = False) -> list[EvalItem]:
    """The training jsonl format, checked the same way (file and line number in every error)."""
    from vqaserve.train.data import load_jsonl

    records = load_jsonl(path, skip_bad_lines=skip_bad_lines)
    items = [EvalItem(r.image, r.question, r.answer, r.type, r.lang, r.schema) for r in records]
    return items[:limit] if limit else items


def question_for(item: EvalItem, model: str | None) -> Question:
    """Greedy, with room for the longest catalogue answer: the "can't tell" sentence (~40 tokens
    with shop-toy's tokenizer), or a JSON object (~50), so neither is cut off and scored wrong."""
    ref = ImageRef(kind="url" if item.image.startswith(("http://", "https://")) else "path",
                   payload=item.image, name="image")
    params = GenerationParams(max_new_tokens=128 if item.schema else 64, temperature=0.0, json_schema=item.schema)
    return Question(turns=[Turn(role="user", parts=[Part(image_ref=ref), Part(text=item.question)])],
                    params=params, model=model)


async def evaluate(pipeline: Any, items: Sequence[EvalItem], model: str | None = None,
                   concurrency: int = 16, progress: bool = True) -> Report:
    """Answer every item through `pipeline.answer`, `concurrency` questions in flight at a time."""
    from vqaserve.errors import VQAError

    semaphore = asyncio.Semaphore(max(1, concurrency))
    bar = None
    if progress:
        import sys

        from tqdm import tqdm

        bar = tqdm(total=len(items), desc="eval", unit="q", file=sys.stderr, mininterval=1.0)
    correct = 0

    async def one(item: EvalItem) -> Outcome:
        nonlocal correct
        async with semaphore:
            try:
                answer = await pipeline.answer(question_for(item, model))
                outcome = score(item, answer.text, answer.confidence)
            except VQAError as exc:  # one bad picture fails alone and counts as wrong
                outcome = Outcome(item, "", False, error=exc.message)
        if bar is not None:
            correct += outcome.correct
            bar.update(1)
            bar.set_postfix(acc=f"{correct / bar.n:.3f}", refresh=False)
        return outcome

    started = time.perf_counter()
    try:
        outcomes = await asyncio.gather(*(one(it) for it in items))
    finally:
        if bar is not None:
            bar.close()
    return Report(list(outcomes), time.perf_counter() - started)


def format_table(summary: dict[str, Any], title: str = "") -> str:
    """Accuracy by question type (rows) and language (columns), plus overall."""
    by_tl = summary["by_type_lang"]
    langs = sorted(summary["by_lang"])
    lines = [title] if title else []
    header = f"{'type':<10}" + "".join(f"{lang:>10}" for lang in langs) + f"{'all':>10}{'n':>7}"
    lines += [header, "-" * len(header)]
    for qtype, stats in summary["by_type"].items():
        cells = "".join(f"{_pct(by_tl.get(f'{qtype}/{lang}')):>10}" for lang in langs)
        lines.append(f"{qtype:<10}{cells}{_pct(stats):>10}{stats['n']:>7}")
    lines.append("-" * len(header))
    cells = "".join(f"{_pct(summary['by_lang'][lang]):>10}" for lang in langs)
    lines.append(f"{'overall':<10}{cells}{summary['overall'] * 100:>9.1f}%{summary['n']:>7}")
    if summary.get("by_field"):
        lines.append("JSON fields right: " + "  ".join(f"{name} {_pct(stats)}"
                                                       for name, stats in summary["by_field"].items()))
    refusals = summary.get("refusals", {})
    if "unanswerable" in refusals:
        r = refusals["unanswerable"]
        lines.append(f"unanswerable questions answered with the can't-tell sentence: {r['in_language'] * 100:.1f}% "
                     f"in their language, {r['other_language'] * 100:.1f}% in the other ({r['n']})")
    if "catalogue" in refusals:
        r = refusals["catalogue"]
        lines.append(f"catalogue questions refused with it: {r['share'] * 100:.1f}% ({r['refused']} of {r['n']})")
    return "\n".join(lines)


def _pct(stats: dict[str, float] | None) -> str:
    return "-" if not stats else f"{stats['accuracy'] * 100:.1f}%"

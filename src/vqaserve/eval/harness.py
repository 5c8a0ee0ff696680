"""Evaluation through the service's own pipeline: exact-match accuracy by question type and language.

Every question is a `Question` answered by `Pipeline.answer` (images as `ImageRef(kind="path")`), so
eval measures what users get: the same image normalization, safety checks, cache and batcher.
Questions are sent concurrently so a batcher can group them. Scoring follows SHOP_CATALOGUE.md:
exact match after trimming whitespace, lower-casing English and dropping a final period / 。.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vqaserve.types import GenerationParams, ImageRef, Part, Question, Turn


def normalize_answer(text: str) -> str:
    text = text.strip()
    if text.endswith((".", "。")):
        text = text[:-1].rstrip()
    return text.lower()  # lower-casing leaves Chinese unchanged


def is_correct(prediction: str, gold: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(gold)


@dataclass(frozen=True)
class EvalItem:
    image: str  # local path (or URL)
    question: str
    answer: str
    type: str = "all"
    lang: str = "?"


@dataclass
class Outcome:
    item: EvalItem
    prediction: str
    correct: bool
    error: str | None = None
    confidence: float | None = None  # the answer's (confidence.py); eval/calibration.py reads it


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

    def summary(self) -> dict[str, Any]:
        errors = [o for o in self.outcomes if not o.correct]
        return {
            "n": self.n, "overall": round(self.accuracy, 4),
            "by_type": self.breakdown(lambda o: o.item.type),
            "by_lang": self.breakdown(lambda o: o.item.lang),
            "by_type_lang": self.breakdown(lambda o: f"{o.item.type}/{o.item.lang}"),
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
    items = [EvalItem(r.image, r.question, r.answer, r.type, r.lang) for r in records]
    return items[:limit] if limit else items


def question_for(item: EvalItem, model: str | None, max_new_tokens: int = 24) -> Question:
    ref = ImageRef(kind="url" if item.image.startswith(("http://", "https://")) else "path",
                   payload=item.image, name="image")
    return Question(turns=[Turn(role="user", parts=[Part(image_ref=ref), Part(text=item.question)])],
                    params=GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0), model=model)


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
                outcome = Outcome(item, answer.text, is_correct(answer.text, item.answer),
                                  confidence=answer.confidence)
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
    return "\n".join(lines)


def _pct(stats: dict[str, float] | None) -> str:
    return "-" if not stats else f"{stats['accuracy'] * 100:.1f}%"

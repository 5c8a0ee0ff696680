"""How well the answers' confidence (confidence.py) tells right answers from wrong ones.

`vqa eval` adds these figures to its summary (under "confidence") and prints them under its table:

- AUROC: the probability that a right answer has a higher confidence than a wrong one (ties count
  half; Mann-Whitney). 0.5 is a coin, 1.0 separates them perfectly. Computed over the answers that
  have a confidence; None when all are right or all are wrong.
- At VQA_REVIEW_BELOW: how many answers would be flagged for review, and the accuracy of the
  flagged and the unflagged ones: what a support team that hands the flagged ones to a person gets.
  The same at a few other thresholds (`by_threshold`, in the JSON report), to choose one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from vqaserve.confidence import needs_review

THRESHOLDS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)


class Scored(Protocol):
    """An eval outcome as far as this module reads it (eval/harness.py's Outcome)."""

    @property
    def correct(self) -> bool: ...

    @property
    def confidence(self) -> float | None: ...


def auroc(scores: Sequence[float], right: Sequence[bool]) -> float | None:
    """P(score of a right answer > score of a wrong one), ties counting one half; None without both."""
    pairs = sorted(zip(scores, right, strict=True))
    n_right = sum(right)
    n_wrong = len(pairs) - n_right
    if not n_right or not n_wrong:
        return None
    rank_sum = 0.0  # the right answers' ranks (1-based, tied scores sharing their mean rank)
    i = 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        mean_rank = (i + 1 + j) / 2
        rank_sum += mean_rank * sum(1 for _, ok in pairs[i:j] if ok)
        i = j
    return (rank_sum - n_right * (n_right + 1) / 2) / (n_right * n_wrong)


def _share(outcomes: Sequence[Scored]) -> dict[str, Any]:
    n = len(outcomes)
    return {"n": n, "accuracy": round(sum(o.correct for o in outcomes) / n, 4) if n else None}


def summary(outcomes: Sequence[Scored], review_below: float) -> dict[str, Any]:
    """The "confidence" block of a `vqa eval` report."""
    known = [o for o in outcomes if o.confidence is not None]
    scores = [float(o.confidence) for o in known if o.confidence is not None]
    area = auroc(scores, [o.correct for o in known])

    def split(below: float) -> dict[str, Any]:
        return {"flagged": _share([o for o in known if needs_review(o.confidence, below)]),
                "unflagged": _share([o for o in known if not needs_review(o.confidence, below)])}

    def mean(values: list[float]) -> float | None:
        return round(sum(values) / len(values), 4) if values else None

    return {"confidence": {
        "n": len(known), "auroc": None if area is None else round(area, 4), "review_below": review_below,
        **split(review_below),
        "mean_right": mean([s for s, o in zip(scores, known, strict=True) if o.correct]),
        "mean_wrong": mean([s for s, o in zip(scores, known, strict=True) if not o.correct]),
        "by_threshold": {str(t): split(t) for t in THRESHOLDS},
    }}


def format_summary(figures: dict[str, Any]) -> str:
    """The lines `vqa eval` prints under its table."""
    c = figures.get("confidence")
    if not c or not c["n"]:
        return "confidence: the engine gave none"

    def pct(share: dict[str, Any]) -> str:
        return "-" if share["accuracy"] is None else f"{share['accuracy'] * 100:.1f}%"

    area = "n/a (all right or all wrong)" if c["auroc"] is None else f"{c['auroc']:.3f}"
    flagged, unflagged = c["flagged"], c["unflagged"]
    return (f"confidence: AUROC right vs wrong {area} (n={c['n']}); mean {c['mean_right']} right, "
            f"{c['mean_wrong']} wrong\n"
            f"under VQA_REVIEW_BELOW={c['review_below']}: {flagged['n']} flagged ({pct(flagged)} right), "
            f"{unflagged['n']} not ({pct(unflagged)} right)")

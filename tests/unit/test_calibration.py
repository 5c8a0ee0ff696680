"""eval/calibration.py: AUROC (against a brute-force count of pairs) and the review split."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from vqaserve.eval.calibration import auroc, format_summary, summary

pytestmark = pytest.mark.unit


@dataclass
class Scored:
    correct: bool
    confidence: float | None


def pairs_count(scores: list[float], right: list[bool]) -> float:
    wins = 0.0
    pos = [s for s, r in zip(scores, right, strict=True) if r]
    neg = [s for s, r in zip(scores, right, strict=True) if not r]
    for p in pos:
        for n in neg:
            wins += 1.0 if p > n else 0.5 if p == n else 0.0
    return wins / (len(pos) * len(neg))


def test_auroc_equals_the_share_of_right_wrong_pairs_ordered_right() -> None:
    rng = random.Random(3)
    for _ in range(50):
        n = rng.randint(2, 40)
        scores = [rng.choice([0.1, 0.5, 0.9, rng.random()]) for _ in range(n)]  # with ties
        right = [rng.random() < 0.6 for _ in range(n)]
        if all(right) or not any(right):
            assert auroc(scores, right) is None
        else:
            assert auroc(scores, right) == pytest.approx(pairs_count(scores, right))
    assert auroc([0.9, 0.8, 0.1], [True, True, False]) == 1.0
    assert auroc([0.1, 0.8, 0.9], [True, True, False]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5


def test_summary_splits_at_the_review_threshold() -> None:
    outcomes = [Scored(True, 0.9), Scored(True, 0.7), Scored(False, 0.3), Scored(True, 0.2), Scored(False, None)]
    c = summary(outcomes, review_below=0.5)["confidence"]
    assert c["n"] == 4 and c["auroc"] == round(pairs_count([0.9, 0.7, 0.3, 0.2], [True, True, False, True]), 4)
    assert c["flagged"] == {"n": 2, "accuracy": 0.5} and c["unflagged"] == {"n": 2, "accuracy": 1.0}
    assert (c["mean_right"], c["mean_wrong"]) == (0.6, 0.3)
    assert c["by_threshold"]["0.8"] == {"flagged": {"n": 3, "accuracy": 0.6667}, "unflagged": {"n": 1, "accuracy": 1.0}}
    text = format_summary({"confidence": c})
    assert "AUROC right vs wrong 0.667" in text and "2 flagged (50.0% right)" in text
    assert format_summary(summary([Scored(True, None)], 0.5)) == "confidence: the engine gave none"

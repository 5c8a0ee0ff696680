"""How sure the model was of an answer: one number in 0..1 on every answer, and the review flag.

    confidence = exp(min over the answer's tokens of log p(chosen token))

the probability of the answer's least probable token. p is the model's own distribution at that step
(what vLLM calls raw_logprobs, its default `logprobs_mode`: after a JSON grammar's mask, before
repetition_penalty, min_tokens, temperature, top-k, top-p and min-p), so a sampled answer is judged
by the model, not by the sampler's settings. One unsure token is enough to make an answer doubtful
("blue" vs "purple" is decided by one token; the tokens after it follow almost surely), which an
average would hide.

The token that ended the answer (end of turn, or a stop_token_id) is left out: its probability says
whether the model wanted to add more, not whether what it said is right; and a length-cut answer has
none, so the rule is the same for every answer. An answer with no token of its own (it ended at
once) takes its end token's probability. Both engines compute it with `of_answer`: in process from
the recorded log-probabilities (engines/token_logprobs.py), through vLLM from the logprobs it returns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def of_answer(logprobs: Sequence[float], ended_by_token: bool) -> float:
    """The confidence of an answer whose generated tokens had these log-probabilities, in order;
    `ended_by_token`: the last one is the end token (EOS or a stop_token_id) that ended it."""
    own = logprobs[:-1] if ended_by_token else logprobs
    counted = own or logprobs
    if not counted:
        return 1.0  # nothing generated at all (max_tokens cannot be 0): nothing to doubt
    return min(1.0, max(0.0, math.exp(min(counted))))


def needs_review(confidence: float | None, below: float) -> bool:
    """Flagged for review (and hand-off to a person): a known confidence under VQA_REVIEW_BELOW."""
    return confidence is not None and confidence < below

"""Pieces of batched Hugging Face generation the engine composes: prompts, groups, a per-row stopper.

Kept apart from engines/transformers.py (loading, threads, adapters) so each reads in one sitting.
torch is imported lazily: this module is imported by the engine only.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vqaserve.safety.prompt_guard import ControlTokenNeutraliser
from vqaserve.types import EngineRequest, FinishReason, GenerationParams


@functools.lru_cache(maxsize=8)  # one per loaded tokenizer: the pattern is compiled once
def _neutraliser(control_tokens: tuple[str, ...]) -> ControlTokenNeutraliser:
    return ControlTokenNeutraliser(control_tokens)


def to_messages(request: EngineRequest,
                control_tokens: Sequence[str]) -> tuple[list[dict[str, Any]], list[Any]]:
    """EngineRequest turns -> chat-template messages (image parts as {"type": "image"}) and the
    PIL images in placeholder order.

    Spellings of `control_tokens` in the text are broken ("<|im_start|>" -> "<\u2060|im_start|>"), and
    nothing else is touched. The prompt guard already does this as policy; the engine repeats it
    because a literal "<|image_pad|>" would otherwise desynchronise image placeholders and crash the
    processor, and "<|im_end|>" would let a user forge a turn."""
    neutralise = _neutraliser(tuple(control_tokens))
    messages: list[dict[str, Any]] = []
    images: list[Any] = []
    for turn in request.turns:
        content: list[dict[str, Any]] = []
        for part in turn.parts:
            if part.image is not None:
                content.append({"type": "image"})
                images.append(part.image.image)
            elif part.text is not None:
                content.append({"type": "text", "text": neutralise(part.text)})
        messages.append({"role": turn.role, "content": content})
    return messages, images


def group_key(request: EngineRequest) -> tuple[object, ...]:
    """Requests with equal keys may share one forward pass: same adapter, same sampling settings.

    Seeded sampling runs alone: with a batch-mate the random stream would be shared and the same
    seed would give a different answer depending on who else was in the batch.
    """
    params = request.params
    key: tuple[object, ...] = (request.adapter or "", *params.batch_key())
    if not params.greedy and params.seed is not None:
        key = (*key, "solo", id(request))
    return key


def split_groups(batch: Sequence[EngineRequest]) -> list[list[int]]:
    """Indexes of `batch` grouped by group_key, in first-seen order."""
    groups: dict[tuple[object, ...], list[int]] = {}
    for i, request in enumerate(batch):
        groups.setdefault(group_key(request), []).append(i)
    return list(groups.values())


def generation_kwargs(base_config: Any, params: GenerationParams, max_new_tokens: int) -> Any:
    """A GenerationConfig from the model's own (eos, pad) with our sampling settings on top.

    generate() refills every None from the model's generation_config, so "off" must be spelled as
    a value (eos_token_id=[]), and None means "the model's default" (min_p when the client sent
    none, as vLLM does).
    """
    import copy

    config = copy.deepcopy(base_config)
    config.max_new_tokens = max_new_tokens
    config.max_length = None
    # Both applied by penalty_processors instead, after the log-probabilities are recorded.
    config.min_new_tokens = 0
    config.repetition_penalty = 1.0
    config.num_beams = 1
    if params.greedy:
        config.do_sample = False
        config.temperature, config.top_p, config.top_k, config.min_p = None, None, None, None
    else:
        config.do_sample = True
        config.temperature = params.temperature
        config.top_p = params.top_p if 0.0 < params.top_p < 1.0 else None
        config.top_k = params.top_k if params.top_k > 0 else None
        if params.min_p is not None:
            config.min_p = params.min_p  # 0.0, not None: a sent 0 turns off the model's default min_p
    config.eos_token_id = stop_ids(base_config.eos_token_id, params)
    return config


def penalty_processors(base_config: Any, params: GenerationParams, prompt_len: int, attention_mask: Any,
                       eos_ids: list[int]) -> list[Any]:
    """repetition_penalty (the request's, else the model's default) and min_tokens as logits processors.

    generate() would put them before every processor it is given; listed after the log-probability
    recorder instead, they leave its distribution vLLM's raw one (engines/token_logprobs.py). They
    commute with the grammar's mask (a penalty keeps -inf at -inf), so answers are unchanged.
    """
    from transformers import MinNewTokensLengthLogitsProcessor, RepetitionPenaltyLogitsProcessor

    out: list[Any] = []
    penalty = params.repetition_penalty if params.repetition_penalty is not None else base_config.repetition_penalty
    if penalty is not None and penalty != 1.0:
        padding = (attention_mask != 0).int().argmax(dim=1)  # left padding: the prompt's first real token
        out.append(RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=padding))
    if params.min_tokens and eos_ids:  # suppresses every id in eos_ids before min_tokens tokens
        out.append(MinNewTokensLengthLogitsProcessor(prompt_len, params.min_tokens, eos_ids,
                                                     device=attention_mask.device))
    return out


def stop_ids(model_eos: int | list[int] | None, params: GenerationParams) -> list[int]:
    """The token ids that end a row: the model's EOS (unless ignore_eos) and stop_token_ids."""
    eos = [] if params.ignore_eos or model_eos is None else (
        list(model_eos) if isinstance(model_eos, list) else [model_eos])
    return eos + [i for i in params.stop_token_ids if i not in eos]


def cut_at_stop(text: str, stops: Sequence[str], start: int = 0,
                keep: bool = False) -> tuple[str, bool]:
    """Text up to the earliest stop string (kept when `keep`) and whether one was found.

    Only a stop string that ends after `start` counts: one inside the first min_tokens tokens'
    text does not end the answer (vLLM's rule).
    """
    found: tuple[int, str] | None = None
    for stop in stops:
        i = text.find(stop, max(0, start - len(stop) + 1)) if stop else -1
        if i >= 0 and (found is None or i < found[0]):
            found = (i, stop)
    if found is None:
        return text, False
    i, stop = found
    return text[:i + len(stop) if keep else i], True


def finish_text(decode: Any, ids: list[int], row: RowState) -> tuple[str, FinishReason]:
    """A finished row's answer text and finish reason.

    Like vLLM: the text of a stop_token_id that ended the row is left out, and a stop string is
    cut off, unless include_stop_str_in_output.
    """
    params = row.request.params
    keep = params.include_stop_str_in_output
    if row.reason == "stop" and ids and ids[-1] in params.stop_token_ids and not keep:
        ids = ids[:-1]
    text, hit_stop = cut_at_stop(decode(ids), params.stop, row.min_chars, keep)
    return text, "stop" if hit_stop else (row.reason or "length")


@dataclass
class RowState:
    max_new_tokens: int
    stops: tuple[str, ...]
    request: EngineRequest
    done_at: int | None = None  # number of generated tokens when the row finished
    reason: FinishReason | None = None
    cancelled: bool = False
    min_chars: int = 0  # length of the first min_tokens tokens' text; stop strings count after it


@dataclass
class RowStopper:
    """A per-row StoppingCriteria: its own max_new_tokens, stop strings, EOS, and the request's
    cancel/deadline signal. It records when and why each row stopped; generate() pads the rest."""

    rows: list[RowState]
    prompt_len: int
    eos_ids: set[int]
    decode: Any  # token ids -> text (special tokens skipped)
    calls: int = field(default=0)

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        self.calls += 1
        generated = input_ids.shape[1] - self.prompt_len
        done = []
        for i, row in enumerate(self.rows):
            if row.done_at is None:
                self._check(row, input_ids[i, self.prompt_len:], generated)
            done.append(row.done_at is not None)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _check(self, row: RowState, new_ids: Any, generated: int) -> None:
        min_tokens = row.request.params.min_tokens
        if row.stops and min_tokens and generated == min_tokens:
            row.min_chars = len(self.decode(new_ids.tolist()))
        # Before min_tokens only the length or a cancel ends a row (EOS is suppressed anyway).
        stopped = generated >= min_tokens and (int(new_ids[-1]) in self.eos_ids or (
            bool(row.stops) and cut_at_stop(self.decode(new_ids.tolist()), row.stops, row.min_chars)[1]))
        if stopped:
            row.done_at, row.reason = generated, "stop"
        elif generated >= row.max_new_tokens:
            row.done_at, row.reason = generated, "length"
        elif row.request.should_stop():
            row.done_at, row.reason, row.cancelled = generated, "stop", True

    def finish(self, generated: int) -> None:
        """Rows still open when generate() returned ran out of tokens."""
        for row in self.rows:
            if row.done_at is None:
                row.done_at, row.reason = generated, "length"
